"""Distillation methods end to end: each trains on digits without touching the teacher, the
config and CLI wire them, adapters and CRD's memory live in checkpoints and not in the exported
student, and mistakes get clear errors."""

import math

import pytest
import torch

from kdistill import MethodDistiller, load_model
from kdistill.cli.main import main
from kdistill.config import ConfigError
from kdistill.config.schema import DataConfig
from kdistill.data import build_data
from kdistill.experiment import run
from kdistill.methods import METHODS, method_info
from kdistill.models import build_model, load_state_file
from kdistill.objectives.method_distiller import probe_layers
from kdistill.objectives.terms import build_term

from .conftest import digits_config
from .test_engine import QUIET, StopAt, metric_lines

# Layer pairs between two LeNet-5s on 8x8 digits: conv maps (6x4x4) and the 84-d embedding.
MAPS = [("features.2", "features.2")]
EMBEDDING = [("classifier.4", "classifier.4")]
PAIRS = {"fitnet": MAPS, "at": MAPS, "rkd": EMBEDDING, "pkt": EMBEDDING, "sp": MAPS,
         "crd": EMBEDDING}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    data = build_data(DataConfig(name="digits"))
    x = data.train.images[:128].float()
    x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    return data, x, data.train.labels[:128], data.train.ids[:128]


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_lowers_its_loss_and_leaves_the_teacher_alone(name, digits, teacher_run):
    data, x, y, ids = digits
    torch.manual_seed(0)
    teacher = load_model(teacher_run.run_dir).model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # weights and BN statistics
    student = build_model("lenet5", 10, (1, 8, 8))
    pairs = PAIRS.get(name, [])
    s_shapes, t_shapes = probe_layers(
        student, teacher, [s for s, _ in pairs], [t for _, t in pairs], x[:1]
    )
    info = method_info(name)
    args = {**info.args, **{"dkd": {"warmup_epochs": 0}, "crd": {"nce_k": 256}}.get(name, {})}
    term = build_term(
        name, 1.0, args, pairs, kd_temperature=4.0, scale_by_t2=True, standardize=False,
        student_shapes=s_shapes, teacher_shapes=t_shapes, train_ids=data.train.ids,
        train_labels=data.train.labels,
    )  # fmt: skip
    objective = MethodDistiller(student, teacher, [term], label_weight=0.0)
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    assert not any(p is q for p in objective.parameters() for q in teacher.parameters())
    losses = []
    objective.train()
    for _ in range(25):
        out = objective(x, y, sample_ids=ids)
        optimizer.zero_grad()
        out.loss.total.backward()
        optimizer.step()
        losses.append(out.loss.total.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert set(out.loss.parts) == {"student", term.part}
    assert out.loss.weights["student"] == 0.0
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in teacher.parameters())


def test_a_run_with_feature_methods_resumes_exactly_and_exports_the_student_alone(
    tmp_path, teacher_run
):
    extra = [
        "model.arch=lenet5", "model.args={}", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        "kd.alpha=1.0", "train.epochs=3", "train.deterministic=true",
        "kd.methods=[{name: kd, weight: 0.5}, {name: fitnet, weight: 1.0, pairs: "
        "[{student: features.1, teacher: features.1}]}, {name: crd, weight: 0.1, args: {nce_k: 64}}]",
        "kd.features=[{student: classifier.4, teacher: classifier.4}]",
    ]  # fmt: skip
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    resumed = run(cfg, resume=True, **QUIET)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    last = metric_lines(whole.run_dir)[-1]
    assert {"loss_distill", "loss_fitnet", "loss_crd", "loss_student"} <= set(last["train"])
    weights = load_state_file(whole.run_dir)
    assert set(weights) == set(build_model("lenet5", 10, (1, 8, 8)).state_dict())
    assert load_model(whole.run_dir).model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_fitnet_hint_stage_trains_on_the_hint_alone(teacher_run, digits):
    _data, x, y, _ids = digits
    teacher = load_model(teacher_run.run_dir).model
    student = build_model("lenet5", 10, (1, 8, 8))
    s, t = probe_layers(student, teacher, ["features.2"], ["features.2"], x[:1])
    hint = build_term("fitnet", 2.0, {"hint_epochs": 1}, MAPS, kd_temperature=4.0,
                      scale_by_t2=True, standardize=False, student_shapes=s, teacher_shapes=t)  # fmt: skip
    kd = build_term("kd", 0.9, {}, [], kd_temperature=4.0, scale_by_t2=True, standardize=False,
                    student_shapes={}, teacher_shapes={})  # fmt: skip
    objective = MethodDistiller(student, teacher, [kd, hint], label_weight=0.1)
    objective.set_epoch(0)
    first = objective(x, y).loss
    assert set(first.parts) == {"student", "fitnet"} and first.weights["student"] == 0.0
    objective.set_epoch(1)
    later = objective(x, y).loss
    assert later.weights == {"student": 0.1, "distill": 0.9 * 16, "fitnet": 2.0}


def test_dkd_warms_up_linearly():
    term = build_term("dkd", 1.0, {**method_info("dkd").args, "warmup_epochs": 4}, [],
                      kd_temperature=4.0, scale_by_t2=True, standardize=False,
                      student_shapes={}, teacher_shapes={})  # fmt: skip
    assert [term.weight_at(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_a_wrong_layer_name_lists_the_layers_with_their_shapes(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path, "model.arch=lenet5", "model.args={}", "kd.alpha=1.0",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        "kd.methods=[{name: at, pairs: [{student: features.9, teacher: features.2}]}]",
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"(?s)student has no layer 'features.9'.*\n.*features.0 \[1, 6, 8, 8\]"
    ):
        run(cfg, **QUIET)


def test_logit_methods_read_the_teacher_cache(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path, f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips) "kd.alpha=1.0",
        "kd.teacher_cache.enabled=true", "train.epochs=1",
        "kd.methods=[{name: dkd, args: {warmup_epochs: 0}}, {name: dist}, {name: kd, weight: 0.5}]",
    )  # fmt: skip
    result = run(cfg, **QUIET)
    assert {"loss_dkd", "loss_dist", "loss_distill"} <= set(
        metric_lines(result.run_dir)[-1]["train"]
    )
    assert any((tmp_path / "teacher-cache").iterdir())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["kd.methods=[{name: atn}]"], r"unknown distillation method 'atn' \(did you mean 'at'\?\)"),
        (["kd.methods=[{name: at}]"], r"reads layers: give pairs"),
        (["kd.methods=[{name: kd}, {name: kd}]"], "more than once"),
        (["kd.methods=[{name: dkd, args: {temprature: 2}}]"], r"unknown setting\(s\) temprature for dkd; valid: alpha"),
        (["kd.methods=[{name: dkd, args: {alpha: -1}}]"], r"alpha must be float >= 0"),
        (["kd.methods=[{name: dkd, weight: -2}]"], r"weight must be a finite number >= 0"),
        (["kd.methods=[{name: dist, pairs: [{student: a, teacher: b}]}]"], "logits only"),
        (["kd.methods=[{name: crd}]", "kd.features=[{student: a, teacher: b}, {student: c, teacher: d}]"],
         "exactly one layer pair"),
        (["kd.methods=[{name: sp}]", "kd.features=[{student: a, teacher: b}]",
          "kd.teacher_cache.enabled=true"], "teacher runs online"),
        (["kd.methods=[{name: sp}]", "kd.features=[{student: a, teacher: b}]",
          "kd.teachers=[{checkpoint: t1}, {checkpoint: t2}]"], "kd.teachers has 2"),
        (["kd.methods=[{name: kd}]", "kd.teacher_weight=0.5"], "joint teacher training"),
        (["kd.features=[{student: a}]"], "names a student and a teacher layer"),
        (["kd.methods=[{name: dkd}]", "kd.beta=0.5"], r"kd.beta=0.5 weighs Hinton's term"),
    ],
)  # fmt: skip
def test_method_config_mistakes_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        digits_config(tmp_path, "kd.teachers=[{checkpoint: t}]", *overrides)


def test_methods_and_layers_verbs(capsys, teacher_run):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in METHODS) and "Zhao et al., CVPR 2022" in out
    assert main(["layers", "model.arch=lenet5", "model.args={}",
                 f"kd.teachers=[{{checkpoint: {teacher_run.run_dir}}}]"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "student (lenet5)" in out and "teacher 0" in out and "features.2" in out
    assert "[1, 6, 4, 4]" in out


def test_report_compares_methods(tmp_path, teacher_run):
    from PIL import Image

    for methods in ("[{name: kd}]", "[{name: dist}]"):
        run(digits_config(tmp_path / "runs", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
                          "kd.alpha=0.5", f"kd.methods={methods}", "train.epochs=1",
                          f"name=m{len(methods)}"), **QUIET)  # fmt: skip
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "figures/methods.png" in md and "Distillation methods" in md
    image = Image.open(out / "figures" / "methods.png").convert("L")
    assert len(image.getcolors(maxcolors=1 << 16)) > 10  # drawn, not blank


@pytest.mark.parametrize(
    "policy",
    [
        "[{kind: quantization, starting_epoch: 1, weight_bits: 4, activation_bits: 8}]",
        "[{kind: channel_pruning, ratio: 0.5, starting_epoch: 1}]",
    ],
    ids=["qat", "channel-pruning"],
)
def test_feature_methods_train_with_compression(tmp_path, teacher_run, policy):
    cfg = digits_config(
        tmp_path, "model.arch=lenet5", "model.args={}", "kd.alpha=1.0", "train.epochs=2",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips) f"policies={policy}",
        "kd.methods=[{name: kd, weight: 0.5}, {name: pkt, pairs: [{student: classifier.4, "
        "teacher: classifier.4}]}]",
    )  # fmt: skip
    result = run(cfg, **QUIET)
    last = metric_lines(result.run_dir)[-1]
    assert last["train"]["loss_pkt"] > 0 and result.record.test_top1 > 0.3  # chance: 0.1


def test_a_quantized_run_with_a_feature_method_resumes(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path, "model.arch=lenet5", "model.args={}", "kd.alpha=1.0", "train.epochs=2",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips) "train.measure_latency=false",
        "policies=[{kind: quantization, weight_bits: 4, activation_bits: 8}]",
        "kd.methods=[{name: fitnet, weight: 1.0, pairs: [{student: classifier.4, teacher: classifier.4}]}]",
        "optim.grad_clip=2.0", "train.on_collapse=warn",  # a 4-bit LeNet-5 on 8x8 digits is fragile
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(1)], **QUIET)
    # the student comes back as the exported QAT graph: its layers are found through it
    result = run(cfg, resume=True, **QUIET)
    assert metric_lines(result.run_dir)[-1]["train"]["loss_fitnet"] > 0
