"""Every CLI verb end to end on the bundled digits (seconds each)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdistill.cli.main import main

VENV_BIN = Path(sys.executable).parent


def test_version_from_the_console_script():
    out = subprocess.run(
        [str(VENV_BIN / "kdistill"), "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("kdistill ")


def test_demo(demo_run):
    tmp_path, out = demo_run
    assert "WARNING" not in out  # the shipped recipes do not warn about themselves
    assert "distilled student" in out and "scratch student" in out and "Distillation " in out
    for name in ("digits-teacher", "digits-scratch", "digits-distill"):
        run_dir = (tmp_path / name).resolve()  # the link to the newest run of that name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["test_samples"] == 359 and 0.5 < summary["test_top1"] <= 1
        assert summary["warnings"] == [], summary["warnings"]
        for item in ("config.yaml", "metrics.jsonl", "model.safetensors", "best.safetensors"):
            assert (run_dir / item).exists(), item
        events = tmp_path / "tensorboard" / run_dir.parent.name / run_dir.name
        assert list(events.glob("events.out.tfevents.*")), events
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == summary["epochs"]
    distilled = json.loads((tmp_path / "digits-distill" / "summary.json").read_text())
    assert distilled["mode"] == "distill" and distilled["teacher_test_top1"] > 0.9
    for key in (
        "test_top1",
        "test_top5",
        "best_test_top1",
        "params",
        "size_bytes",
        "epoch_times_s",
        "total_time_s",
        "git_sha",
        "teacher_test_top1",
    ):
        assert key in distilled


def test_train_with_yaml_flags_and_overrides(tmp_path, capsys):
    code = main(
        [
            "train",
            "digits/scratch",
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
            "--lr",
            "0.1",
            "model.args.hidden=[16]",
            "--name",
            "s",
            "-q",
        ]
    )
    assert code == 0
    run_dir = (tmp_path / "s").resolve()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (
        cfg["train"]["epochs"] == 2
        and cfg["optim"]["lr"] == 0.1
        and cfg["model"]["args"]["hidden"] == [16]
    )
    assert "test top-1" in capsys.readouterr().out


def test_distiller_flags(tmp_path, teacher_run):
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "mlp",
            "model.args.hidden=[16]",
            "--epochs",
            "3",
            "--kd-teacher",
            "lenet5",
            "--kd-resume",
            str(teacher_run.run_dir),
            "--kd-temp",
            "2",
            "--kd-dw",
            "0.7",
            "--kd-sw",
            "0.3",
            "--kd-start-epoch",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "d",
            "-q",
            "train.tensorboard=false",
        ]
    )
    assert code == 0
    run_dir = (tmp_path / "d").resolve()
    kd = yaml.safe_load((run_dir / "config.yaml").read_text())["kd"]
    assert (kd["temperature"], kd["beta"], kd["alpha"], kd["start_epoch"]) == (2.0, 0.7, 0.3, 1)
    assert kd["teachers"][0]["arch"] == "lenet5"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "loss_distill" not in epochs[0]["train"] and "agreement" not in epochs[0]["train"]
    assert "loss_distill" in epochs[1]["train"] and "agreement" in epochs[1]["train"]
    assert "agreement" in epochs[0]["test"]  # agreement on test is measured from the start


def test_eval_matches_the_summary(tmp_path, teacher_run, capsys):
    assert main(["eval", str(teacher_run.run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(teacher_run.summary["test_top1"])
    assert result["arch"] == "lenet5" and result["samples"] == 359
    assert main(["eval", str(teacher_run.run_dir / "model.safetensors"), "--split", "train"]) == 0
    assert "digits train (1438 samples)" in capsys.readouterr().out


def test_seeds_are_aggregated(tmp_path, capsys):
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "model.args.hidden=[8]",
            "--epochs",
            "2",
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path),
            "--name",
            "m",
            "-q",
            "train.tensorboard=false",
        ]
    )
    assert code == 0
    agg_files = list(tmp_path.glob("m-*/seeds.json"))
    assert len(agg_files) == 1
    agg = json.loads(agg_files[0].read_text())
    assert agg["seeds"] == [0, 1] and agg["test_top1"]["n"] == 2
    values = agg["test_top1"]["values"]
    assert agg["test_top1"]["best"] == max(values) and agg["test_top1"]["worst"] == min(values)
    assert "mean" in capsys.readouterr().out


def test_existing_runs_are_not_clobbered(tmp_path, capsys):
    args = [
        "train",
        "--dataset",
        "digits",
        "model.args.hidden=[8]",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "-q",
        "train.tensorboard=false",
    ]
    assert main(args) == 0
    assert main(args) == 1
    assert "already holds a finished run" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["train", "no/such/recipe"], 2, "neither a file nor a shipped recipe"),
        (["train", "digits/scratch", "optim.lrr=1"], 1, "Did you mean 'lr'"),
        (["train", "digits/scratch", "extra"], 2, "unexpected argument"),
        (["train", "--seeds", "0,0"], 2, "distinct"),
        (["train", "--dataset", "digits", "--kd-teacher", "lenet5"], 1, r"has no checkpoint"),
        (
            ["train", "--dataset", "digits", "--kd-resume", "/nonexistent/teacher"],
            1,
            "does not exist",
        ),
        (["eval", "/nonexistent/model.safetensors"], 1, "does not exist"),
        (["train", "--dataset", "digits", "--epoch", "1"], 2, "unrecognized arguments: --epoch"),
        (
            ["cache", "build", "digits/distill", "--epochs", "1"],
            2,
            "unrecognized arguments: --epochs",
        ),
        (
            ["train", "digits/distill", "--out", "/nonexistent-dir"],
            1,
            r"the teacher runs/demo/digits-teacher does not exist; train it first: kdistill train digits/teacher",
        ),
        (["train", "digits/distil"], 2, "did you mean 'digits/distill'"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, argv, code, message):
    monkeypatch.chdir(tmp_path)  # relative paths (a recipe's runs/demo/...) resolve in here
    if argv[0] == "train" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    assert status == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert pytest.importorskip("re").search(message, err), err


def test_config_and_models_verbs(capsys):
    assert main(["config", "show", "digits/distill", "kd.temperature=8"]) == 0
    assert "temperature: 8.0" in capsys.readouterr().out
    assert main(["config", "list"]) == 0
    assert "fashion-mnist/hinton-mlp-distill" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "preact_resnet110_cifar" in out and "gpt_micro " in out and "dim=128" in out
    assert main([]) == 2


def test_seeds_with_resume_start_seeds_that_never_started(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "model.args.hidden=[8]", "--epochs", "1",
            "--out", str(tmp_path), "-q", "train.tensorboard=false"]  # fmt: skip
    assert main([*args, "--seed", "0"]) == 0
    assert main([*args, "--seeds", "0,1", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: already finished" in out and "nothing to resume yet" in out
    assert len(list(tmp_path.glob("run-*/seed-*/summary.json"))) == 2
