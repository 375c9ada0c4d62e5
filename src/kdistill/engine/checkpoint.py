"""Training checkpoints: written atomically after every epoch, checked when read back.

Layout of ``<run dir>/checkpoints/``::

    epoch-NNNN/model.safetensors   the student (a model file: ``kdistill eval`` reads it)
    epoch-NNNN/state.pt            Trainer.state_dict(): loop position, optimizer, RNG states,
                                   the objective's extra state and the callbacks' states
    latest.json                    the newest complete checkpoint, the best epoch's checkpoint,
                                   the sha256 of each of their files, and what the run was
                                   (config hash, teachers) so that a resume can check it

A checkpoint directory is assembled under a temporary name and renamed into place, and
``latest.json`` (replaced atomically) is the one commit point: an interrupted write never leaves
a checkpoint that looks complete. The best epoch's checkpoint is kept beside the newest ones,
so the best weights and the record that names them always agree. ``state.pt`` is read with
``torch.load(weights_only=True)``: no code is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.engine.trainer import Callback, Trainer
from kdistill.files import (
    CHECKPOINTS,
    LATEST,
    MODEL,
    STATE,
    ArtifactError,
    atomic_dir,
    atomic_write_text,
    os_errors,
    read_json,
    sha256_file,
    verify_file,
)
from kdistill.models import ModelSpec, save_model_file


class CheckpointError(ArtifactError):
    """A checkpoint that is missing, incomplete, corrupted or from another run."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _epoch_dir_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


@dataclass(frozen=True)
class Checkpoint:
    """A complete, checked checkpoint (see :meth:`Checkpointer.latest`).

    Attributes:
        path: the newest checkpoint's directory.
        epoch: the epoch it was saved after (0-based).
        best: the directory of the best epoch's checkpoint (may be ``path``).
        info: what the run recorded about itself (config hash, teachers).
    """

    path: Path
    epoch: int
    best: Path
    info: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    """Why each newer checkpoint was passed over (damaged or missing files), newest first."""

    @property
    def model_file(self) -> Path:
        return self.path / MODEL

    @property
    def best_model_file(self) -> Path:
        return self.best / MODEL

    def training_state(self) -> dict[str, Any]:
        """The saved ``Trainer.state_dict()`` (``weights_only``: no arbitrary objects)."""
        path = self.path / STATE
        try:
            with os_errors(path, "read"):
                return torch.load(path, map_location="cpu", weights_only=True)
        except ArtifactError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path} cannot be read safely ({e})") from None


class Checkpointer(Callback):
    """Saves a checkpoint after every epoch (the last callback to act on an epoch).

    Args:
        run_dir: the run directory.
        keep: how many of the newest epoch checkpoints to keep (the best one is kept too).
        describe: ``student -> ModelSpec``: the spec of the student as it is now (compression
            may have changed its structure), recorded in the checkpoint's model file.
        info: what identifies the run (config hash, teacher identities), stored in the pointer
            so that a resume can check it is continuing the same run.
        enabled: ``False`` on the processes of a data-parallel run that do not write.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        keep: int,
        describe: Callable[[nn.Module], ModelSpec],
        info: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.root = checkpoint_root(run_dir)
        self.keep = keep
        self.describe = describe
        self.info = dict(info or {})
        self.enabled = enabled

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.enabled:
            self.save(trainer)

    def save(self, trainer: Trainer) -> Path:
        """Write the checkpoint of the last finished epoch and make it the latest."""
        state = trainer.state
        epoch = state.epoch - 1
        name = _epoch_dir_name(epoch)
        final = self.root / name
        with atomic_dir(final) as tmp:
            save_model_file(
                tmp / MODEL, trainer.student_state_dict(), self.describe(trainer.student)
            )
            with os_errors(tmp / STATE, "write"):
                torch.save(trainer.state_dict(), tmp / STATE)
        best = _epoch_dir_name(state.best_epoch) if state.best_epoch >= 0 else name
        previous = self._pointer()
        kept = self._kept_after(name, best)
        # the older checkpoints a resume can fall back to when a newer one is damaged: those of
        # this run's past (not of a future abandoned by a resume) whose best is kept too
        older = [
            entry
            for entry in _entries(previous)
            if isinstance(entry.get("epoch"), int)
            and entry["epoch"] < epoch
            and entry.get("dir") in kept
            and entry.get("best") in kept
        ]
        known = previous.get("files", {}) if isinstance(previous.get("files"), dict) else {}
        files = {}
        for d in {name, best, *(e["dir"] for e in older), *(e["best"] for e in older)}:
            reuse = d != name and isinstance(known.get(d), dict)  # hashed when written
            files[d] = (
                known[d] if reuse else {f: sha256_file(self.root / d / f) for f in (MODEL, STATE)}
            )
        pointer = {
            "epoch": epoch,
            "dir": name,
            "best": best,
            "files": files,
            "info": self.info,
            "older": [{k: e[k] for k in ("epoch", "dir", "best")} for e in older],
        }
        atomic_write_text(self.root / LATEST, json.dumps(pointer, indent=2, sort_keys=True))
        self._prune(keep=kept)
        return final

    def _kept_after(self, name: str, best: str) -> set[str]:
        """The epoch directories kept once ``name`` is the newest: the ``keep`` newest and the
        best."""
        epochs = sorted({*(p.name for p in self.root.glob("epoch-*") if p.is_dir()), name})
        return {*epochs[-self.keep :], name, best}

    def _pointer(self) -> dict[str, Any]:
        path = self.root / LATEST
        if not path.is_file():
            return {}
        try:
            data = read_json(path, "checkpoint pointer")
        except ArtifactError:
            return {}
        return data if isinstance(data, dict) else {}

    def _prune(self, keep: set[str]) -> None:
        for old in sorted(p.name for p in self.root.glob("epoch-*") if p.is_dir()):
            if old not in keep:
                shutil.rmtree(self.root / old, ignore_errors=True)

    @staticmethod
    def latest(run_dir: str | Path) -> Checkpoint | None:
        """The newest complete checkpoint of a run whose files check out; ``None`` if there is
        none. A newer checkpoint with missing or damaged files is passed over for an older one
        the pointer lists (:attr:`Checkpoint.skipped` says which and why).

        Raises:
            CheckpointError: an unreadable pointer, or no listed checkpoint whose files are all
                there with their recorded sha256.
        """
        root = checkpoint_root(run_dir)
        pointer_path = root / LATEST
        if not pointer_path.is_file():
            return None
        remedy = "start the run over with --force (the damaged run is moved aside, not deleted)"
        try:
            pointer = read_json(pointer_path, "checkpoint pointer")
            if isinstance(pointer, dict) and "dir" in pointer and "files" not in pointer:
                raise CheckpointError(
                    f"{pointer_path} was written by an older kdistill, before checkpoints carried "
                    "checksums: this version cannot continue it. Finish it with the kdistill that "
                    "started it, or start over with --force (the old run is moved aside)"
                )
            skipped: list[str] = []
            first: ArtifactError | None = None
            for entry in _entries(pointer):
                try:
                    for d in {entry["dir"], entry["best"]}:
                        for f, digest in pointer["files"][d].items():
                            verify_file(root / d / f, digest, "checkpoint file", remedy)
                except ArtifactError as e:
                    first = first or e
                    skipped.append(f"{entry['dir']}: {e}".split("; " + remedy)[0])
                    continue
                return Checkpoint(
                    root / entry["dir"],
                    int(entry["epoch"]),
                    root / entry["best"],
                    dict(pointer.get("info", {})),
                    tuple(skipped),
                )
            if first is None:
                raise KeyError("dir")  # a pointer that lists no checkpoint
            raise first
        except ArtifactError as e:
            raise CheckpointError(str(e)) from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{pointer_path} is malformed; {remedy}") from None


def _entries(pointer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checkpoints a pointer lists, newest first: its own, then the older ones it keeps."""
    if "dir" not in pointer:
        return []
    older = pointer.get("older", [])
    return [
        {"epoch": pointer["epoch"], "dir": pointer["dir"], "best": pointer["best"]},
        *(e for e in older if isinstance(e, dict)),
    ]
