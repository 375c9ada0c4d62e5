"""Run directories: where a run of a config and seed lives, and what may happen to it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from kdistill.config.loader import config_hash
from kdistill.config.schema import RunConfig
from kdistill.engine.checkpoint import (
    latest_checkpoint,
    resolve_model_path,
)


class RunDirError(ValueError):
    """The run directory is in a state that the requested action cannot use."""


def run_identity(cfg: RunConfig) -> str:
    """A hash of what determines a run's result apart from its seed: the config values, and the
    contents of the weight files it names (teachers, initial weights). A config that names a
    teacher as ``runs/teacher`` therefore gets a new run directory when that teacher is
    retrained, instead of being mistaken for the finished run with the old teacher."""
    files = [t.checkpoint for t in cfg.kd.teachers] if cfg.kd is not None else []
    files.append(cfg.model.checkpoint)
    digests = [file_digest(resolve_model_path(f)) if f is not None else None for f in files]
    base = config_hash(cfg, exclude=("out_dir", "train.seed"))
    if all(d is None for d in digests):
        return base
    return hashlib.sha256(json.dumps([base, digests]).encode()).hexdigest()[:10]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def group_dir(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>-<identity>``: one directory per config, shared by its seeds."""
    return Path(cfg.out_dir) / f"{cfg.name}-{run_identity(cfg)}"


def run_dir_for(cfg: RunConfig) -> Path:
    """``<group dir>/seed-<seed>``: where one training run writes everything."""
    return group_dir(cfg) / f"seed-{cfg.train.seed}"


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Check the run directory against the requested action (new run, resume, start over)."""
    finished = (run_dir / "summary.json").is_file()
    started = run_dir.exists() and any(run_dir.iterdir())
    if force and started:
        shutil.rmtree(run_dir)
        return
    if resume:
        if finished:
            raise RunDirError(
                f"{run_dir} already holds a finished run (summary.json); nothing to resume"
            )
        return
    if finished:
        raise RunDirError(
            f"{run_dir} already holds a finished run with this config (see its summary.json); "
            "pass --force to train it again from scratch"
        )
    if started:
        ckpt = latest_checkpoint(run_dir) if (run_dir / "checkpoints").exists() else None
        where = f"its last checkpoint is {ckpt.name}" if ckpt else "it has no checkpoint yet"
        raise RunDirError(
            f"{run_dir} holds an unfinished run of this config ({where}); pass --resume to "
            "continue it or --force to start over"
        )


def latest_link(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>``: a symlink to the newest finished run of that name."""
    return Path(cfg.out_dir) / cfg.name


def link_latest(cfg: RunConfig, run_dir: Path) -> None:
    """Point ``<out_dir>/<name>`` at ``run_dir`` (atomically), so configs can name a teacher
    as ``runs/<name>`` without knowing the config hash."""
    link = latest_link(cfg)
    if link.exists() and not link.is_symlink():
        return  # a real file or directory of the user's: leave it alone
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir, link.parent))
    os.replace(tmp, link)
