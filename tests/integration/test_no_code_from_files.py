"""A model file never runs code: an import-path architecture planted in a file's metadata is
refused at every entry point that loads a model, unless the user writes the same path
themselves or passes --trust-code."""

import sys

import pytest

from kdistill.cli.main import main
from kdistill.models import load_state_file, read_model_spec, save_model_file

PLANTED = "kd_planted_code:build"
MODULE = PLANTED.split(":")[0]
# Importing the planted module is enough to run its code: it leaves a marker file.
SOURCE = """
import os, pathlib
pathlib.Path(os.environ["KD_PLANTED_MARKER"]).write_text("the planted code ran")
from kdistill.models.lenet import build_lenet5 as build
"""
FAST = ["train.tensorboard=false", "train.measure_latency=false", "train.threads=2"]


@pytest.fixture
def planted(tmp_path, monkeypatch, teacher_run):
    """A copy of the trained digits teacher whose metadata names the planted import path."""
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(code_dir))
    marker = tmp_path / "marker"
    monkeypatch.setenv("KD_PLANTED_MARKER", str(marker))
    run_dir = tmp_path / "planted-run"
    plant(teacher_run.run_dir / "model.safetensors", run_dir / "model.safetensors")
    yield run_dir, marker
    sys.modules.pop(MODULE, None)


def plant(source, target):
    spec = read_model_spec(source)
    planted_spec = type(spec)(**{**spec.__dict__, "arch": PLANTED, "origin": None})
    save_model_file(target, load_state_file(source), planted_spec)


def code_ran(marker):
    """Whether the planted code ran (and reset, so the next check starts clean)."""
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    sys.modules.pop(MODULE, None)
    return ran


def student_args(out):
    return ["--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--out", str(out), "-q", *FAST]


def refused(capsys, marker):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert PLANTED in err and "import path" in err and "--trust-code" in err, err
    assert not code_ran(marker)


def test_eval_refuses_then_runs_what_the_user_names(planted, capsys):
    run_dir, marker = planted
    for target in (run_dir, run_dir / "model.safetensors"):
        assert main(["eval", str(target)]) == 1
        refused(capsys, marker)
    # the controls: the same file runs when the user names the path or trusts the file
    assert main(["eval", str(run_dir), "--trust-code"]) == 0
    assert code_ran(marker)
    assert main(["eval", str(run_dir), "--arch", PLANTED]) == 0
    assert code_ran(marker)


def test_teachers_refuse_planted_code(planted, tmp_path, capsys):
    run_dir, marker = planted
    as_file = ["--kd-resume", str(run_dir / "model.safetensors")]
    as_dir = [f"kd.teachers.0.checkpoint={run_dir}"]
    for teacher in (as_file, as_dir):
        assert main(["train", *student_args(tmp_path / "out"), *teacher]) == 1
        refused(capsys, marker)
    # a teacher architecture the user writes is theirs to run
    assert main(["train", *student_args(tmp_path / "ok"), *as_file, "--kd-teacher", PLANTED]) == 0
    assert code_ran(marker)


def test_cache_build_and_fine_tuning_refuse_planted_code(planted, tmp_path, capsys):
    run_dir, marker = planted
    cache = [
        "cache",
        "build",
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "out"),
        f"kd.teachers.0.checkpoint={run_dir}",
        "-q",
    ]
    assert main(cache) == 1
    refused(capsys, marker)
    start = ["model.arch=null", f"model.checkpoint={run_dir}"]
    assert main(["train", *student_args(tmp_path / "out"), *start]) == 1
    refused(capsys, marker)
    assert main(["train", *student_args(tmp_path / "ok"), *start, "--trust-code"]) == 0
    assert code_ran(marker)


def test_resume_and_report_never_run_planted_code(planted, tmp_path, capsys):
    _run_dir, marker = planted
    args = [*student_args(tmp_path / "out"), "--name", "victim", "train.epochs=2"]
    assert main(["train", *args]) == 0
    victim = (tmp_path / "out" / "victim").resolve()
    for file in victim.rglob("*.safetensors"):  # every model file of the run, checkpoints too
        plant(file, file)
    capsys.readouterr()
    # the files no longer match the checksums recorded when they were written: refused
    assert main(["report", str(victim), "--out", str(tmp_path / "report")]) == 1
    assert "was changed after kdistill wrote it" in capsys.readouterr().err
    assert not code_ran(marker)
    (victim / "summary.json").unlink()  # as if it had been interrupted after its last epoch
    assert main(["train", *args, "--resume"]) == 1
    assert "checkpoint file" in capsys.readouterr().err
    assert not code_ran(marker)
