"""Interrupted work leaves nothing behind: runs and cache builds killed at any write resume to
exactly what an uninterrupted run makes; one writer per run directory and cache; killing a sweep
or the ``--nproc`` launcher stops every process it started.

These start many processes: they are the slow group (``-m slow``), which the test command
runs too.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdistill.files import RECORD
from kdistill.locks import LockedError, exclusive_lock, lock_path_for
from kdistill.models import load_state_file

pytestmark = pytest.mark.slow

KDISTILL = [sys.executable, "-m", "kdistill"]
CRASH = Path(__file__).parent / "crash"
RUN = [
    "train", "--dataset", "digits", "--arch", "mlp", "model.args.hidden=[16]",
    "model.args.dropout=0.1", "data.augment.crop_padding=1", "train.deterministic=true",
    "train.tensorboard=false", "train.measure_latency=false", "train.threads=1", "--epochs", "4",
    "--name", "crash", "-q",
]  # fmt: skip


def kdistill(args, *, env=None, timeout=300, **kwargs):
    return subprocess.run(
        [*KDISTILL, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(CRASH), **(env or {})},
        **kwargs,
    )


def stale(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    done = kdistill([*RUN, "--out", out])
    assert done.returncode == 0, done.stderr[-2000:]
    return load_state_file((out / "crash").resolve())


# 18 atomic writes make this run: 1 config, 2 metrics, then per epoch a checkpoint's model file
# (3, 6, ...), its folder (4, 7, ...) and the pointer (5, 8, ...), then the final model (15),
# the best model (16), the record (17) and the link (18). A kill at each kind of write:
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 10, 15, 16, 17, 18])
def test_a_run_killed_at_any_write_resumes_to_the_same_weights(tmp_path, uninterrupted, kill_at):
    out = tmp_path / "runs"
    crashed = kdistill([*RUN, "--out", out], env={"KDISTILL_KILL_AT_WRITE": str(kill_at)})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = kdistill([*RUN, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = next(out.glob("crash-*/seed-0"))
    weights = load_state_file(run_dir)
    assert weights.keys() == uninterrupted.keys()
    assert all((weights[k] == uninterrupted[k]).all() for k in weights)  # bitwise
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert stale(out) == []


@pytest.mark.parametrize("kill_at", [7])
def test_a_run_killed_while_writing_a_checkpoint_resumes(tmp_path, uninterrupted, kill_at):
    out = tmp_path / "runs"
    env = {"KDISTILL_KILL_AT_WRITE": str(kill_at), "KDISTILL_KILL_IN_SAVE": "1"}
    crashed = kdistill([*RUN, "--out", out], env=env)
    assert crashed.returncode == -signal.SIGKILL
    # the half-written state (epoch 1's) never became a checkpoint, epoch 0's did: a plain
    # start says to resume it
    plain = kdistill([*RUN, "--out", out])
    assert plain.returncode == 1, plain.stdout[-2000:]
    assert "pass --resume" in plain.stderr and "Traceback" not in plain.stderr
    resumed = kdistill([*RUN, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = load_state_file(next(out.glob("crash-*/seed-0")))
    assert all((weights[k] == uninterrupted[k]).all() for k in weights)
    assert stale(out) == []


def test_force_moves_the_old_run_aside(tmp_path):
    out = tmp_path / "runs"
    crashed = kdistill([*RUN, "--out", out], env={"KDISTILL_KILL_AT_WRITE": "9"})
    assert crashed.returncode == -signal.SIGKILL
    forced = kdistill([*RUN, "--out", out, "--force"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "was moved to" in forced.stdout
    (moved,) = (out / ".replaced").glob("crash-*/seed-0-*")
    assert (moved / "checkpoints" / "latest.json").is_file()  # what --resume needed is kept


CACHE = [
    "cache", "build", "--dataset", "digits", "data.augment.crop_padding=1",
    "kd.teacher_cache.dtype=float32", "-q",
]  # fmt: skip


def test_a_cache_build_killed_twice_resumes_and_matches(tmp_path, teacher_run):
    env = {"KDISTILL_CACHE_CHUNK": "128"}  # 12 chunks of 128 samples x 9 views
    teacher = f"kd.teachers.0.checkpoint={teacher_run.run_dir}"
    whole = kdistill([*CACHE, teacher, f"kd.teacher_cache.dir={tmp_path / 'whole'}"], env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    cache = [*CACHE, teacher, f"kd.teacher_cache.dir={tmp_path / 'cache'}"]
    for kill_at in (3, 4):  # each chunk writes its progress record atomically
        crashed = kdistill(cache, env={**env, "KDISTILL_KILL_AT_WRITE": str(kill_at)})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    done = kdistill(cache, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunks already done" in done.stdout
    for name in ("logits.npy", "views.npy", "sample_ids.npy"):
        a = np.load(tmp_path / "whole" / name)
        b = np.load(tmp_path / "cache" / name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert stale(tmp_path) == []


def lock_is_held(directory: Path) -> bool:
    """Whether a live process holds the lock of ``directory``: a non-blocking flock probe (the
    holder's record in the file outlives a killed holder, so reading it cannot tell)."""
    path = lock_path_for(directory)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def lock_is_free(directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not lock_is_held(directory):
            return True
        time.sleep(0.2)
    return False


def test_the_lock_probe_sees_another_process_holding_it(tmp_path):
    """The probe these tests rely on: held while another process holds the lock, free once
    that process is killed (even though its record stays in the lock file)."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from kdistill.locks import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1], 'test'):\n"
         "    print('held', flush=True); time.sleep(600)", str(tmp_path / "d")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_is_held(tmp_path / "d")
        with (
            pytest.raises(LockedError, match=f"process {holder.pid}"),
            exclusive_lock(tmp_path / "d", "test"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_path_for(tmp_path / "d").read_text()  # the dead holder's record is still there
    assert lock_is_free(tmp_path / "d", timeout=10)


SLOW_RUN = [
    "train", "--dataset", "digits", "--arch", "lenet5", "--epochs", "200", "--name", "long",
    "train.tensorboard=false", "train.threads=1", "-q",
]  # fmt: skip


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "runs"
    first = subprocess.Popen(
        [*KDISTILL, *SLOW_RUN, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (run_dir,) = _wait_for_run_dirs(out, 1)
        holder = json.loads(lock_path_for(run_dir).read_text())
        assert holder["pid"] == first.pid
        for extra in ([], ["--resume"]):
            second = kdistill([*SLOW_RUN, "--out", out, *extra])
            assert second.returncode == 1
            assert f"process {first.pid} on host {holder['host']}" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert lock_is_free(run_dir, timeout=10)  # the OS released the dead holder's lock
    assert not (run_dir / RECORD).exists()


def _wait_for_run_dirs(root: Path, count: int, timeout: float = 180) -> list[Path]:
    """Run directories under ``root`` (a run tree or a sweep) whose lock a process holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        locks = [*root.glob("*/.seed-*.lock"), *root.glob("*/runs/*/.seed-*.lock")]
        dirs = [lock.parent / lock.name[1:-5] for lock in locks]
        held = [d for d in dirs if lock_is_held(d)]
        if len(held) >= count:
            return held
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} runs started under {root}")


def test_killing_a_sweep_stops_its_workers(tmp_path):
    out = tmp_path / "sweeps"
    sweep = subprocess.Popen(
        [*KDISTILL, "sweep", "--base", "digits/teacher", "--grid", "optim.lr=0.01,0.02",
         "--set", "train.epochs=400", "--set", "train.tensorboard=false",
         "--parallel", "2", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        held = _wait_for_run_dirs(out, 2)
    finally:
        sweep.kill()  # SIGKILL: the sweep cannot clean up; its workers must stop on their own
        sweep.wait()
    for run_dir in held:
        assert lock_is_free(run_dir, timeout=15), f"a worker still trains {run_dir}"


def test_killing_the_launcher_stops_every_rank(tmp_path):
    out = tmp_path / "runs"
    launcher = subprocess.Popen(
        [*KDISTILL, *SLOW_RUN, "--out", str(out), "--nproc", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (run_dir,) = _wait_for_run_dirs(out, 1)
        time.sleep(3)  # the ranks are training
    finally:
        launcher.kill()
        launcher.wait()
    assert lock_is_free(run_dir, timeout=20), "a rank still trains after its launcher was killed"
