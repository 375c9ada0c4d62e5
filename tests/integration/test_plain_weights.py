"""Weights trained elsewhere: plain PyTorch state dicts (Distiller's .pth.tar too) and foreign
.safetensors files, as teachers and as starting points; never unpickled beyond tensors."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from kdistill.experiment import load_model, run
from kdistill.models import ModelFileError

from .conftest import digits_config
from .test_engine import QUIET


@pytest.fixture(scope="module")
def teacher_weights(teacher_run):
    loaded = load_model(teacher_run.run_dir)
    return loaded.model.state_dict(), teacher_run.record.test_top1


def distill_from(tmp_path, path, *extra):
    cfg = digits_config(
        tmp_path / "runs", "train.epochs=1", f"kd.teachers.0.checkpoint={path}", *extra
    )
    return run(cfg, **QUIET)


def test_a_distiller_style_checkpoint_teaches_like_the_original(tmp_path, teacher_weights):
    state, top1 = teacher_weights
    path = tmp_path / "teacher.pth.tar"  # Distiller's layout: nested, DataParallel prefixes
    torch.save(
        {"epoch": 7, "arch": "lenet5", "state_dict": {f"module.{k}": v for k, v in state.items()}},
        path,
    )
    result = distill_from(tmp_path, path, "kd.teachers.0.arch=lenet5")
    assert result.record.teacher_test_top1 == pytest.approx(top1)  # the same teacher
    (identity,) = result.record.teachers
    assert identity.arch == "lenet5" and identity.file.endswith("teacher.pth.tar")


def test_a_foreign_safetensors_file_and_a_starting_point(tmp_path, teacher_weights):
    state, top1 = teacher_weights
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    result = distill_from(tmp_path, path, "kd.teachers.0.arch=lenet5")
    assert result.record.teacher_test_top1 == pytest.approx(top1)
    # the same weights as a student's starting point: fine-tuning starts at the teacher's accuracy
    cfg = digits_config(tmp_path / "ft", "model.arch=lenet5", "model.args={}", f"model.checkpoint={path}",
                        "train.epochs=1", "optim.lr=1e-6")  # fmt: skip
    assert run(cfg, **QUIET).record.test_top1 == pytest.approx(top1, abs=0.01)


def test_plain_weights_need_an_architecture_and_must_fit_it(tmp_path, teacher_weights):
    state, _ = teacher_weights
    path = tmp_path / "teacher.pt"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=r"without an architecture.*kd.teachers.0.arch"):
        distill_from(tmp_path, path)
    with pytest.raises(
        ModelFileError, match=r"do not fit the architecture \(missing: .*unexpected: .*features"
    ):
        distill_from(tmp_path, path, "kd.teachers.0.arch=mlp")
    wrong = dict(state)
    wrong["classifier.5.weight"] = wrong["classifier.5.weight"].double()
    torch.save(wrong, path)
    with pytest.raises(ModelFileError, match=r"dtype: classifier.5.weight torch.float64"):
        distill_from(tmp_path, path, "kd.teachers.0.arch=lenet5")


def test_a_checkpoint_that_needs_unpickling_code_is_refused(tmp_path, teacher_weights):
    state, _ = teacher_weights
    path = tmp_path / "checkpoint.pth.tar"
    # a Python object (as Distiller stores its optimizer class and schedules): not just tensors
    torch.save({"state_dict": state, "extra": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(
        ModelFileError, match=r"stores Python objects besides tensors.*could run code"
    ):
        distill_from(tmp_path, path, "kd.teachers.0.arch=lenet5")
    with pytest.raises(ModelFileError, match="plain PyTorch checkpoint"):
        load_model(path)


def test_a_foreign_teacher_gets_its_own_normalization(tmp_path, teacher_run):
    """A teacher trained on standardized digits, handed over as plain weights, teaching a
    student whose pipeline does not standardize: with the teacher's input_mean / input_std its
    inputs are renormalized and it scores what it scored at home; without, it does not."""
    from kdistill.config import RunConfig, apply_overrides
    from kdistill.experiment import build_run
    from kdistill.models import load_state_file
    from kdistill.teachers import Renormalize

    weights = tmp_path / "teacher.pt"
    torch.save(load_state_file(teacher_run.run_dir), weights)  # the weights alone travel
    _model, spec = load_model(teacher_run.run_dir)

    def teacher(extra=""):
        cfg = apply_overrides(RunConfig(), [
            f"out_dir={tmp_path}", "data.normalize=false", "kd.min_teacher_top1=0",
            f"kd.teachers=[{{arch: lenet5, checkpoint: {weights}{extra}}}]",
        ])  # fmt: skip
        parts = build_run(cfg, log=lambda _: None)
        return parts.teacher_check.test_top1, parts.teacher.members[0].input_transform

    top1, transform = teacher(f", input_mean: {list(spec.mean)}, input_std: {list(spec.std)}")
    assert isinstance(transform, Renormalize)
    assert top1 == pytest.approx(teacher_run.record.test_top1, abs=1e-6)
    wrong, transform = teacher()
    assert transform is None and wrong != pytest.approx(top1, abs=1e-6)  # a shifted input
