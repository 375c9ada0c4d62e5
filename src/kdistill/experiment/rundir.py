"""Run directories: where a run of a config and seed lives, who may write it, and what a new
start, ``--resume`` and ``--force`` may do to what is there.

* ``<out_dir>/<name>-<identity>/seed-<seed>/``: the identity is a hash of the config's values
  (without the seed and the output directory). Which teacher weights a name resolves to is
  not part of it: it is recorded in the run's checkpoints and record and checked on resume.
* One writer at a time: an exclusive lock (a hidden sibling file) for as long as the run
  trains; a second writer is refused with the holder's pid and host. Under the lock, the
  temporaries of writers that died are removed.
* ``--force`` never deletes: it moves the old run aside to ``<out_dir>/.replaced/``.
* ``<out_dir>/<name>`` links to the run of the recipe as written, so that other recipes can
  name it as a teacher; a run with overrides does not move the link.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from kdistill.config.loader import config_hash
from kdistill.config.schema import RunConfig
from kdistill.engine.checkpoint import Checkpoint, Checkpointer
from kdistill.files import RECORD, os_errors, remove_stale_temporaries
from kdistill.locks import exclusive_lock

Log = Callable[[str], None]
REPLACED = ".replaced"


class RunDirError(ValueError):
    """The run directory is in a state that the requested action cannot use."""


# Settings added after runs were already made: left out of the identity while at their
# default, so the runs made before them keep their directories (and resume, and are reused).
_ADDED_SETTINGS = {
    "kd.methods": [],
    "kd.features": [],
    "kd.standardize": False,
    "schedule.gammas": [],
    "policies[].structure": "elements",
    "policies[].remove_epoch": None,
    "policies[].groups": "filters",
    "policies[].threshold": None,
    "model.input_mean": None,
    "model.input_std": None,
    "model.input_size": None,
    "kd.teachers[].input_mean": None,
    "kd.teachers[].input_std": None,
    "kd.teachers[].input_size": None,
    "policies[].threshold_in_std": False,
    "data.pipeline": "auto",
    "data.augment.crop": "pad",
    "data.augment.scale": [0.08, 1.0],
    "data.augment.ratio": [0.75, 4 / 3],
    "data.augment.views": 16,
    "policies[].group_dependency": "independent",
    "policies[].threshold_criteria": "mean_abs",
    "policies[].keep_mask": False,
    "data.files": [],
    "model.init_from_teacher": False,
    "model.teacher_layers": None,
    "kd.teachers[].teacher_layers": None,
    "train.logit_chunk_tokens": None,
    "kd.teachers[].init_from_teacher": False,
    "data.block": 128,
    "data.tokenizer": None,
    "kd.token_loss": "forward_kl",
    "kd.jsd_beta": 0.5,
    "kd.skew": 0.1,
    "model.lora": None,
    "kd.sequence_level": None,
    "kd.on_policy": None,
    "kd.teachers[].lora": None,
    "kd.cross_tokenizer": None,
    "train.parallel": "ddp",
    "train.shard_teacher": False,
}


def run_identity(cfg: RunConfig) -> str:
    """A hash of what determines a run's result apart from its seed: the config's values."""
    return config_hash(
        cfg, exclude=("out_dir", "train.seed", "data.workers"), at_default=_ADDED_SETTINGS
    )


def group_dir(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>-<identity>``: one directory per config, shared by its seeds."""
    return Path(cfg.out_dir) / f"{cfg.name}-{run_identity(cfg)}"


def run_dir_for(cfg: RunConfig) -> Path:
    """``<group dir>/seed-<seed>``: where one training run writes everything."""
    return group_dir(cfg) / f"seed-{cfg.train.seed}"


def move_aside(run_dir: Path, out_dir: Path) -> Path:
    """Move a run directory to ``<out_dir>/.replaced/<group>/<seed>-<time>`` (kept, not deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir / REPLACED / run_dir.parent.name / f"{run_dir.name}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{run_dir.name}-{stamp}-{n}")
    with os_errors(run_dir, "move aside"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), str(target))
    return target


def _started(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


@contextlib.contextmanager
def claim_run_dir(
    cfg: RunConfig, *, resume: bool, force: bool, log: Log
) -> Iterator[Checkpoint | None]:
    """Hold the run directory of ``cfg`` for writing; yields the checkpoint to resume from.

    * a new run: the directory must not hold a finished run or an unfinished one with a
      checkpoint (an interrupted start without any checkpoint simply starts again);
    * ``resume``: continues from the newest checkpoint, or starts from the beginning with a
      line saying so when there is none;
    * ``force``: moves whatever is there aside and starts over.

    Raises:
        LockedError: another process is writing this run.
        RunDirError: the directory holds what the action would lose or cannot use.
    """
    run_dir = run_dir_for(cfg)
    with exclusive_lock(
        run_dir,
        f"run directory {run_dir}",
        advice="Wait for it to finish, or stop it and continue with --resume.",
    ):
        for stale in remove_stale_temporaries(run_dir):
            log(f"removed {stale}, left by an interrupted writer")
        finished = (run_dir / RECORD).is_file()
        if force and _started(run_dir):
            moved = move_aside(run_dir, Path(cfg.out_dir))
            log(f"--force: the previous run in {run_dir} was moved to {moved}")
            yield None
            return
        if finished:
            if resume:
                raise RunDirError(
                    f"{run_dir} already holds a finished run ({RECORD}); nothing to resume"
                )
            raise RunDirError(
                f"{run_dir} already holds a finished run with this config (see its {RECORD}); "
                "pass --force to train it again from scratch (the old run is moved aside)"
            )
        checkpoint = Checkpointer.latest(run_dir)
        if checkpoint is None:
            if _started(run_dir):
                log(
                    f"{run_dir}: an earlier start of this run stopped before its first "
                    "checkpoint; starting it from the beginning"
                )
            elif resume:
                log(f"{run_dir}: nothing to resume yet; starting the run from the beginning")
                hint = _before_auto_precision(cfg)
                if hint:
                    log(hint)
            yield None
            return
        if not resume:
            raise RunDirError(
                f"{run_dir} holds an unfinished run of this config (its last checkpoint is "
                f"{checkpoint.path.name}); pass --resume to continue it or --force to start over"
            )
        yield checkpoint


def _before_auto_precision(cfg: RunConfig) -> str | None:
    """Where a run of ``cfg`` begun before ``kd.teacher_precision`` defaulted to ``auto`` is
    (its identity holds the old default, ``fp32``), and how to continue it; ``None`` if none."""
    if cfg.kd is None or cfg.kd.teacher_precision != "auto":
        return None
    older = run_dir_for(replace(cfg, kd=replace(cfg.kd, teacher_precision="fp32")))
    if not _started(older):
        return None
    return (
        f"note: {older} holds a run of this config begun before kd.teacher_precision defaulted "
        "to auto (it ran the teacher in fp32); to continue that one instead, stop this one and "
        "rerun with kd.teacher_precision=fp32 --resume"
    )


def latest_link(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>``: a link to the run of the recipe as written."""
    return Path(cfg.out_dir) / cfg.name


def link_latest(cfg: RunConfig, run_dir: Path) -> None:
    """Point ``<out_dir>/<name>`` at ``run_dir`` (atomically), so configs can name a teacher
    as ``runs/<name>`` without knowing the config hash."""
    link = latest_link(cfg)
    if link.exists() and not link.is_symlink():
        return  # a real file or directory of the user's: leave it alone
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link.tmp")
    with os_errors(link, "link"):
        for left in link.parent.glob(f".{link.name}.*.link.tmp"):  # by writers that died
            if not _alive(left.name.split(".")[-3]):
                left.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(run_dir, link.parent))
        os.replace(tmp, link)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True
