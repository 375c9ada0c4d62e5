"""Engine guarantees, end to end: exact resume, NaN stops, teacher checks, collapse detection,
ensembles and joint teacher training."""

import json
import shutil

import pytest
import torch

from kdistill.config import apply_overrides
from kdistill.engine import Callback, Checkpointer, CollapseError, NonFiniteLossError
from kdistill.experiment import RunDirError, TeacherCheckError, load_model, run
from kdistill.experiment.rundir import run_dir_for
from kdistill.models import ModelSpec, load_state_file, save_model_file

from .conftest import digits_config

QUIET = {"progress": False, "log": lambda _: None}


class StopAt(Callback):
    """Simulates a crash at the start of an epoch (after the previous checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def metric_lines(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock times differ between runs; everything else must not
        row.pop("epoch_time_s"), row.pop("eval_time_s")
    return rows


@pytest.mark.parametrize("distill", [False, True])
def test_resume_equals_an_uninterrupted_run(tmp_path, teacher_run, distill):
    extra = [
        "model.args.dropout=0.2",
        "data.augment.crop_padding=1",
        "train.deterministic=true",
        "train.epochs=4",
    ]
    if distill:  # fp32, not timed: two runs compared must not choose their precisions apart
        extra += [f"kd.teachers.0.checkpoint={teacher_run.run_dir}", "kd.teacher_precision=fp32"]
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    checkpoint = Checkpointer.latest(tmp_path / "b" / whole.run_dir.parent.name / "seed-0")
    assert checkpoint.path.name == "epoch-0001"
    with pytest.raises(RunDirError, match="pass --resume"):
        run(cfg, **QUIET)
    resumed = run(cfg, resume=True, **QUIET)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    a, b = load_state_file(whole.run_dir), load_state_file(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.record.test_top1 == whole.record.test_top1
    assert len(resumed.record.epoch_times_s) == 4
    # byte for byte, so that a user's sha256sum agrees (safetensors' own writer orders the
    # metadata keys differently from one process to the next)
    assert (resumed.run_dir / "model.safetensors").read_bytes() == (
        whole.run_dir / "model.safetensors"
    ).read_bytes()


def test_a_resume_passes_over_a_damaged_newest_checkpoint(tmp_path):
    extra = ["train.deterministic=true", "train.epochs=4", "train.keep_checkpoints=2"]
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(3)], **QUIET)
    run_dir = tmp_path / "b" / whole.run_dir.parent.name / "seed-0"
    newest = run_dir / "checkpoints" / "epoch-0002" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a disk that lost the end of the file
    messages = []
    resumed = run(cfg, resume=True, progress=False, log=messages.append)
    passed = [m for m in messages if m.startswith("passing over the checkpoint epoch-0002")]
    assert len(passed) == 1 and "state.pt is corrupted" in passed[0]
    assert any(m.startswith("resuming") and "(epoch-0001)" in m for m in messages)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    a, b = load_state_file(whole.run_dir), load_state_file(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


class PoisonAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                next(trainer.student.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path):
    cfg = digits_config(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"became nan at epoch 2, step 1 of 23"):
        run(cfg, callbacks=[PoisonAt(1)], **QUIET)
    run_dir = tmp_path / next(tmp_path.iterdir()).name / "seed-0"
    ckpt = Checkpointer.latest(run_dir)
    assert ckpt.path.name == "epoch-0000"
    stopped = json.loads((run_dir / "stopped.json").read_text())
    assert (stopped["stopped"], stopped["epoch"]) == ("non_finite_loss", 2)
    assert stopped["last_good_checkpoint"] == "epoch-0000"
    model, _ = load_model(ckpt.path)  # the last good checkpoint is intact and finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_untrained_teacher_is_refused(tmp_path):
    spec = ModelSpec(
        arch="mlp", args={"hidden": [4]}, num_classes=10, input_shape=(1, 8, 8), dataset="digits"
    )
    torch.manual_seed(0)
    model = spec.build_architecture()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    save_model_file(tmp_path / "untrained.safetensors", model.state_dict(), spec)
    cfg = digits_config(tmp_path, f"kd.teachers.0.checkpoint={tmp_path / 'untrained.safetensors'}")
    with pytest.raises(
        TeacherCheckError, match=r"reaches only 1\d\.\d+% test top-1.*cannot\s+teach"
    ):
        run(cfg, **QUIET)


def test_a_teacher_for_other_classes_is_refused(tmp_path):
    spec = ModelSpec(arch="mlp", args={"hidden": [4]}, num_classes=3, input_shape=(1, 8, 8))
    save_model_file(tmp_path / "t.safetensors", spec.build_architecture().state_dict(), spec)
    with pytest.raises(ValueError, match="predicts 3 classes but digits has 10"):
        run(
            digits_config(tmp_path, f"kd.teachers.0.checkpoint={tmp_path / 't.safetensors'}"),
            **QUIET,
        )


def test_collapse_is_detected(tmp_path, monkeypatch):
    (tmp_path / "constant_model.py").write_text(
        "import torch\n"
        "class Constant(torch.nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n"
        "        self.bias = torch.nn.Parameter(torch.zeros(n))\n"
        "    def forward(self, x):\n"
        "        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)\n"
        "def build(num_classes):\n"
        "    return Constant(num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = digits_config(
        tmp_path / "runs",
        "model.arch=constant_model:build",
        "model.args={}",
        "train.on_collapse=stop",
    )
    with pytest.raises(CollapseError, match=r"collapsed .*at or below chance.*lower optim.lr"):
        run(cfg, **QUIET)
    # the run directory says that it stopped, at which epoch and why; the epoch that stopped it
    # is in metrics.jsonl (the student's numbers), but not checkpointed
    run_dir = run_dir_for(cfg)
    stopped = json.loads((run_dir / "stopped.json").read_text())
    assert stopped["stopped"] == "collapse" and stopped["epoch"] == 1
    assert "at or below chance" in stopped["message"] and stopped["last_good_checkpoint"] is None
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0]
    assert Checkpointer.latest(run_dir) is None
    messages = []
    warn = digits_config(
        tmp_path / "runs2",
        "model.arch=constant_model:build",
        "model.args={}",
        "train.epochs=1",
        "train.on_collapse=warn",
    )
    run(warn, progress=False, log=messages.append)
    assert any(m.startswith("WARNING:") and "collapsed" in m for m in messages)


def test_ensemble_of_teachers(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path,
        f"kd.teachers=[{{checkpoint: {teacher_run.run_dir}}}, {{checkpoint: {teacher_run.run_dir}}}]",
        "kd.ensemble_weights=[1, 3]",
    )
    result = run(cfg, **QUIET)
    assert result.record.teacher_test_top1 == pytest.approx(teacher_run.record.test_top1)
    assert len(result.record.teachers) == 2
    logits = run(
        digits_config(
            tmp_path / "l",
            f"kd.teachers=[{{checkpoint: {teacher_run.run_dir}}}, {{checkpoint: {teacher_run.run_dir}}}]",
            "kd.ensemble_reduce=logits",
        ),
        **QUIET,
    )
    assert logits.record.teacher_test_top1 == pytest.approx(teacher_run.record.test_top1)


def test_joint_teacher_training(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path, f"kd.teachers.0.checkpoint={teacher_run.run_dir}", "kd.teacher_weight=0.5"
    )
    result = run(cfg, **QUIET)
    before = load_state_file(teacher_run.run_dir)
    after = load_state_file(result.run_dir / "teacher.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    student = load_state_file(result.run_dir)
    assert set(student) != set(after)  # the student's file holds the student only


def test_teacher_with_other_normalization_is_adapted(tmp_path, teacher_run):
    # the student trains on unnormalized inputs; the teacher was trained on normalized ones
    cfg = digits_config(
        tmp_path, f"kd.teachers.0.checkpoint={teacher_run.run_dir}", "data.normalize=false"
    )
    result = run(cfg, **QUIET)
    assert result.record.teacher_test_top1 == pytest.approx(teacher_run.record.test_top1)


def test_callbacks_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(
        "from kdistill.engine import Callback\n"
        "seen = []\n"
        "class Count(Callback):\n"
        "    def on_epoch_end(self, trainer, epoch, record):\n"
        "        seen.append(epoch)\n"
        "def not_a_callback():\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run(digits_config(tmp_path / "a", "train.callbacks=[my_callbacks:Count]"), **QUIET)
    import my_callbacks

    assert my_callbacks.seen == [0, 1, 2]
    with pytest.raises(ValueError, match="not a kdistill Callback"):
        run(digits_config(tmp_path / "b", "train.callbacks=[my_callbacks:not_a_callback]"), **QUIET)
    with pytest.raises(ValueError, match="cannot load"):
        run(digits_config(tmp_path / "c", "train.callbacks=[my_callbacks:Nope]"), **QUIET)


def test_a_distillation_gradient_far_above_cross_entropy_is_reported(tmp_path, teacher_run):
    """The first-batch health check: ratio recorded always, warning (log and summary) only
    when the distillation gradient dwarfs a cross-entropy gradient and nothing clips it."""
    common = [f"kd.teachers.0.checkpoint={teacher_run.run_dir}", "train.epochs=1"]
    messages = []
    mild = run(digits_config(tmp_path / "a", *common, "kd.temperature=1", "kd.alpha=0.5"), **QUIET)
    assert 0 < mild.record.kd_gradient_ratio < 2.5 and not mild.record.warnings
    strong = ["kd.temperature=20", "kd.alpha=0.0", "kd.beta=2.0"]
    hot = run(digits_config(tmp_path / "b", *common, *strong), progress=False, log=messages.append)
    assert hot.record.kd_gradient_ratio > 2.5
    assert any(m.startswith("WARNING:") and "optim.grad_clip" in m for m in messages)
    assert "optim.grad_clip" in hot.record.warnings[0]
    clipped = run(digits_config(tmp_path / "c", *common, *strong, "optim.grad_clip=2.0"), **QUIET)
    assert clipped.record.kd_gradient_ratio > 2.5 and not clipped.record.warnings


def test_a_teacher_weaker_than_the_scratch_student_is_reported(tmp_path):
    scratch = run(digits_config(tmp_path, "name=scratch", "train.epochs=6"), **QUIET)
    weak = run(
        digits_config(
            tmp_path / "teachers", "name=weak", "model.args.hidden=[6]", "train.epochs=2"
        ),
        **QUIET,
    )
    assert weak.record.test_top1 < scratch.record.test_top1
    messages = []
    distilled = run(
        digits_config(tmp_path, "name=taught", f"kd.teachers.0.checkpoint={weak.run_dir}"),
        progress=False,
        log=messages.append,
    )
    (warning,) = [w for w in distilled.record.warnings if "from scratch" in w]
    assert f"{scratch.record.test_top1:.2%}" in warning and str(scratch.run_dir) in warning
    assert any(m.startswith("WARNING: the teacher") for m in messages)


def test_a_run_moved_to_another_output_directory_resumes(tmp_path):
    cfg = digits_config(tmp_path / "a", "train.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    group = next((tmp_path / "a").glob("run-*"))
    shutil.move(str(group), str(tmp_path / "b" / group.name))
    moved = digits_config(tmp_path / "b", "train.epochs=3")
    messages = []
    resumed = run(moved, resume=True, progress=False, log=messages.append)
    assert any(m.startswith("resuming") and "after epoch 2" in m for m in messages)
    assert resumed.run_dir == tmp_path / "b" / group.name / "seed-0"
    assert len(resumed.record.epoch_times_s) == 3


def test_a_teacher_that_now_resolves_to_other_weights_stops_a_resume(tmp_path, teacher_run):
    teachers = tmp_path / "teachers"
    shutil.copytree(teacher_run.run_dir, teachers / "t-1")
    (teachers / "t").symlink_to("t-1")  # the name other recipes use, as runs/<name> is
    reference = f"kd.teachers.0.checkpoint={teachers / 't'}"
    cfg = digits_config(tmp_path / "runs", reference, "train.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    # the name now points at another teacher (say, a retrained one)
    shutil.copytree(teacher_run.run_dir, teachers / "t-2")
    weights = load_state_file(teachers / "t-2" / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01
    spec = load_model(teachers / "t-1").spec
    (teachers / "t-2" / "summary.json").unlink()  # a model file named directly this time
    save_model_file(teachers / "t-2" / "model.safetensors", weights, spec)
    (teachers / "t").unlink()
    (teachers / "t").symlink_to("t-2/model.safetensors")
    with pytest.raises(
        RunDirError, match=r"was trained with the teacher .*sha256 .* now resolves to .*sha256"
    ):
        run(cfg, resume=True, **QUIET)


def test_cache_build_refuses_a_teacher_that_cannot_teach(tmp_path, capsys):
    from kdistill.cli.main import main

    spec = ModelSpec("mlp", {"hidden": [4]}, 10, (1, 8, 8), dataset="digits")
    zeros = {k: torch.zeros_like(v) for k, v in spec.build_architecture().state_dict().items()}
    save_model_file(tmp_path / "zero.safetensors", zeros, spec)
    code = main(
        ["cache", "build", "--dataset", "digits", "--out", str(tmp_path),
         f"kd.teachers.0.checkpoint={tmp_path / 'zero.safetensors'}", "-q"]
    )  # fmt: skip
    assert code == 1
    assert "cannot" in capsys.readouterr().err and not (tmp_path / "teacher-cache").exists()


def test_auto_precision_is_recorded_and_a_resume_keeps_it(tmp_path, teacher_run, monkeypatch):
    from kdistill.experiment import precision

    teacher = f"kd.teachers.0.checkpoint={teacher_run.run_dir}"
    cfg = digits_config(tmp_path, teacher, "train.epochs=3")
    assert cfg.kd.teacher_precision == "auto"
    monkeypatch.setattr(precision, "native_bf16", lambda device: None)  # a CPU without bf16
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    run_dir = next(tmp_path.glob("*/seed-0"))
    assert Checkpointer.latest(run_dir).info["teacher_precision"] == "fp32"
    # resumed on a machine where bf16 would win: the run goes on as it began
    monkeypatch.setattr(precision, "native_bf16", lambda device: "the CPU has amx_bf16")
    monkeypatch.setattr(precision, "PROBE_MARGIN", 10.0)
    lines = []
    resumed = run(cfg, resume=True, progress=False, log=lines.append)
    assert "teacher precision: fp32 (auto, chosen when this run began)" in lines
    assert resumed.record.teacher_precision == "fp32 (auto, chosen when this run began)"
    # a new run on that machine chooses bf16, and says why
    lines = []
    fresh = run(apply_overrides(cfg, ["train.seed=1"]), progress=False, log=lines.append)
    assert fresh.record.teacher_precision.startswith("bf16 (auto: the CPU has amx_bf16 and a")
    assert any(line.startswith("teacher precision: bf16 (auto") for line in lines)


def test_a_resume_points_at_a_run_begun_before_auto_precision(tmp_path, teacher_run):
    teacher = f"kd.teachers.0.checkpoint={teacher_run.run_dir}"
    before = digits_config(tmp_path, teacher, "train.epochs=3", "kd.teacher_precision=fp32")
    with pytest.raises(KeyboardInterrupt):
        run(before, callbacks=[StopAt(2)], **QUIET)
    lines = []
    now = apply_overrides(before, ["kd.teacher_precision=auto"])
    with pytest.raises(KeyboardInterrupt):
        run(now, resume=True, callbacks=[StopAt(1)], progress=False, log=lines.append)
    (note,) = [line for line in lines if line.startswith("note:")]
    assert note.startswith(f"note: {run_dir_for(before)} holds a run of this config")
    assert run_dir_for(before) != run_dir_for(now)
    assert "begun before kd.teacher_precision defaulted to auto" in note
    assert "kd.teacher_precision=fp32" in note


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_stops_before_the_run_directory_is_made(tmp_path):
    cfg = digits_config(tmp_path / "out", "train.device=cuda")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        run(cfg, **QUIET)
    assert not (tmp_path / "out").exists()
