"""Data-parallel training with torch.distributed (gloo, 2 CPU processes) on the digits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KDISTILL = [sys.executable, "-m", "kdistill"]
COMMON = [
    "--dataset",
    "digits",
    "model.args.hidden=[32]",
    "train.tensorboard=false",
    "data.drop_last=true",
    "train.deterministic=true",
    "train.measure_latency=false",
    "-q",
]


def train(out, name, *extra, nproc=None, env=None, timeout=300):
    cmd = [*KDISTILL, "train", *COMMON, "--out", str(out), "--name", name, *extra]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def summary(out, name):
    return json.loads((Path(out) / name / "summary.json").read_text())


def metrics(out, name):
    rows = [
        json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()
    ]
    return [{"train": r["train"], "test": r["test"]} for r in rows]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, teacher_run):
    """Two processes take the steps of one over the same global batch, augmentation included,
    and a FitNets adapter (a linear map outside the DDP-wrapped student) gets its gradients
    averaged across them too (one pair of runs checks both: each launch costs seconds)."""
    args = [
        "--epochs", "2", "-b", "64", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "data.augment.crop_padding=1", "kd.alpha=1.0",
        "kd.methods=[{name: kd, weight: 0.5}, {name: fitnet, weight: 1.0, "
        "pairs: [{student: net.1, teacher: classifier.4}]}]",
    ]  # fmt: skip
    one = train(tmp_path, "one", *args)
    assert one.returncode == 0, one.stderr[-2000:]
    two = train(tmp_path, "two", *args, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data-parallel training on 2 processes (gloo)" in two.stdout
    reports = [
        line for line in two.stdout.splitlines() if "/two-" in line and ": test top-1" in line
    ]
    assert len(reports) == 1  # only the first process reports
    a, b = metrics(tmp_path, "one"), metrics(tmp_path, "two")
    assert a[-1]["train"]["loss_fitnet"] > 0
    for ra, rb in zip(a, b, strict=True):  # float reduction order differs: tolerance 1e-4
        for split in ("train", "test"):
            for key, value in ra[split].items():
                assert rb[split][key] == pytest.approx(value, abs=1e-4), (split, key)
    assert summary(tmp_path, "two")["test_top1"] == pytest.approx(
        summary(tmp_path, "one")["test_top1"], abs=1e-4
    )


def test_crd_trains_on_two_processes(tmp_path, teacher_run):
    run = train(
        tmp_path, "crd", "--epochs", "1", "-b", "64",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}", "kd.alpha=1.0",
        "kd.methods=[{name: crd, args: {nce_k: 64}, pairs: [{student: net.1, teacher: classifier.4}]}]",
        nproc=2,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert metrics(tmp_path, "crd")[-1]["train"]["loss_crd"] > 0


KILLER = '''
import os, signal
from pathlib import Path
from kdistill.engine import Callback

class KillRank1Once(Callback):
    """Simulates a crashed machine: rank 1 dies in the middle of epoch 2, once."""
    def on_step_end(self, trainer, step):
        marker = Path(os.environ["KILL_MARKER"])
        if os.environ.get("RANK") == "1" and trainer.state.epoch == 1 and step % 22 == 5 and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_dead_process_stops_the_run_and_it_resumes(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    env = {
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "KILL_MARKER": str(tmp_path / "marker"),
    }
    # a collective timeout of an hour: if the survivor waited for it instead of noticing the
    # dead peer, the launch would outlast the subprocess timeout and fail this test
    args = [
        "--epochs", "3", "train.callbacks=[killer:KillRank1Once]", "train.dist_timeout_s=3600"
    ]  # fmt: skip
    crashed = train(tmp_path, "k", *args, nproc=2, env=env, timeout=600)
    assert crashed.returncode != 0
    # the survivor stopped because its peer was gone, by whichever comes first: the connection
    # closing under a collective, or torchrun's SIGTERM (which kdistill's handler reports, or
    # which ends the process before it can); never by the collective timeout
    err = crashed.stderr
    assert (
        "process 0 lost contact with another process" in err
        or "another process of this distributed run failed" in err
        or "Signal 15 (SIGTERM) received" in err
    ), err[-3000:]
    assert "timeout" not in err.lower().replace("dist_timeout", "")
    assert "the distributed run failed" in crashed.stderr
    assert "continue with --resume" in crashed.stderr
    assert "Traceback" not in crashed.stderr, crashed.stderr[-3000:]  # torchrun's own dropped
    run_dirs = list(tmp_path.glob("k-*/seed-0"))
    assert len(run_dirs) == 1 and not (run_dirs[0] / "summary.json").exists()
    latest = json.loads((run_dirs[0] / "checkpoints" / "latest.json").read_text())
    assert latest["epoch"] == 0  # the last complete checkpoint; nothing half-written is visible
    assert not [p for p in (run_dirs[0] / "checkpoints").iterdir() if p.name.startswith(".")]
    resumed = train(tmp_path, "k", *args, "--resume", nproc=2, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert len((run_dirs[0] / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_teacher_cache_is_built_in_parallel(tmp_path, teacher_run, monkeypatch):
    import numpy as np

    from kdistill.cache import TeacherCache

    cache = [
        "kd.teacher_cache.enabled=true",
        "data.augment.crop_padding=1",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_cache.dtype=float32",
    ]
    # small chunks so that both processes get several
    env = {"KDISTILL_CACHE_CHUNK": "128"}
    two = train(
        tmp_path / "two",
        "c",
        "--epochs",
        "1",
        *cache,
        f"kd.teacher_cache.dir={tmp_path / 'cache2'}",
        nproc=2,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = train(
        tmp_path / "one",
        "c",
        "--epochs",
        "1",
        *cache,
        f"kd.teacher_cache.dir={tmp_path / 'cache1'}",
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = TeacherCache(tmp_path / "cache1"), TeacherCache(tmp_path / "cache2")
    assert a.fingerprint == b.fingerprint
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), rtol=1e-5, atol=1e-5)


# Loaded into every process of the run (sitecustomize): records each file a process opens for
# writing, in a log of its own rank.
WRITES_AUDIT = """
import os, sys
_rank = os.environ.get("RANK")
if _rank is not None:
    _log = os.path.join(os.environ["WRITES_LOG_DIR"], f"rank-{_rank}.log")
    def _hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(os.environ["WRITES_ROOT"]):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR)):
                with open(_log, "a") as f:  # not under WRITES_ROOT: not recorded itself
                    f.write(args[0] + "\\n")
    sys.addaudithook(_hook)
"""


def test_only_the_first_process_writes_files_in_a_qat_run(tmp_path):
    """Quantization-aware training on two processes: rank 0 alone writes the run directory,
    the checkpoints and the int8 model (the export step is not a training callback)."""
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(WRITES_AUDIT)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "runs"
    env = {
        "PYTHONPATH": f"{audit}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "WRITES_LOG_DIR": str(logs),
        "WRITES_ROOT": str(out),
    }
    qat = "policies=[{kind: quantization, starting_epoch: 1, weight_bits: 4}]"
    result = train(out, "q", "--epochs", "2", qat, "train.on_collapse=warn", nproc=2, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = summary(out, "q")
    assert Path(record["compression"]["quantization"]["onnx_path"]).is_file()
    written = (logs / "rank-0.log").read_text().splitlines()
    assert any(p.endswith("model.int8.onnx") or ".model.int8.onnx." in p for p in written)
    assert any("checkpoints" in p for p in written)
    assert not (logs / "rank-1.log").exists(), (logs / "rank-1.log").read_text()
