"""The files kdistill writes, how it writes them, and how it checks them when it reads them back.

* **Names**: every file of a run directory, checkpoint and cache is named here once.
* **Atomic writes**: content goes to a temporary file in the same directory (``.NAME.*.tmp``),
  is flushed to disk and renamed over the target, so readers see the old file or the new one,
  never a part of it. An interrupted writer leaves only such temporaries, which the next writer
  (holding the directory's lock) removes with :func:`remove_stale_temporaries`.
* **Checks**: whatever kdistill later trusts is covered by a sha256 recorded when it was written
  (in the run record, the checkpoint pointer, the cache manifest, or a model file's metadata);
  :func:`verify_file` compares, and every failure is an :class:`ArtifactError` that names the
  file and says what to do.
* **OS errors** (read-only directory, full disk, no permission) become an :class:`ArtifactError`
  naming the path, with nothing half-written left behind.

This module imports nothing of kdistill's and never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- names
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RECORD = "summary.json"  # the run record (kdistill.record.RunRecord)
STOPPED = "stopped.json"  # a run stopped by a health check: which epoch and why
EXPORT_RECORD = "export.json"  # in an export folder: its files and their checks
MODEL = "model.safetensors"
BEST = "best.safetensors"
TEACHER = "teacher.safetensors"  # a jointly trained teacher's final weights
EXPORT_STEMS = {"fp32": "model", "int8": "model.int8"}  # export folder: <stem>.onnx / <stem>.pt2
INT8_ONNX = f"{EXPORT_STEMS['int8']}.onnx"  # a QAT run's int8 model, named as an export's
SEEDS = "seeds.json"  # in a run's group directory: the statistics over its seeds
SWEEP = "sweep.json"  # in a sweep directory: the sweep and its base config (its record is RECORD)
SWEEP_TABLE = "summary.csv"
SWEEP_STUDY = "optuna.db"
TEACHER_CACHES = "teacher-cache"  # in an output directory: the caches runs share
TOKEN_CACHE_DIR = "token-cache"  # in an output directory: tokenized text, shared by runs
TOKENIZERS_DIR = "tokenizers"  # in an output directory: BPE tokenizers trained on a run's text
TENSORBOARD = "tensorboard"  # <out_dir>/tensorboard/<run>/seed-N: a log tree without links
CACHE_MANIFEST = "manifest.json"  # in a teacher cache: its layout, fingerprint and checksums
CACHE_PROGRESS = "progress.json"  # in a cache being built: one per process, progress.json.<rank>
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"  # in checkpoints/: names the newest complete checkpoint
STATE = "state.pt"  # in a checkpoint: trainer, objective and callback states
LOCK = ".lock"


def cache_array(name: str) -> str:
    """The file of one of a teacher cache's arrays (``logits`` -> ``logits.npy``)."""
    return f"{name}.npy"


def teacher_check_file(key: str) -> str:
    """In a teacher cache: the frozen teacher's remembered test check under ``key``."""
    return f"teacher-check-{key[:16]}.json"


def export_file(precision: str, fmt: str) -> str:
    """An export folder's model file: ``model.onnx``, ``model.int8.pt2`` ..."""
    return f"{EXPORT_STEMS[precision]}.{fmt}"


TEMP_SUFFIX = ".tmp"


class ArtifactError(ValueError):
    """A file kdistill needs is missing, unreadable, corrupted or not what it should be."""


def os_error_message(path: str | Path, action: str, error: OSError) -> str:
    reason = error.strerror or str(error)
    hint = {
        "Read-only file system": "choose a writable --out directory",
        "No space left on device": "free some space or choose another --out directory",
        "Permission denied": "check the permissions or choose another --out directory",
        "Disk quota exceeded": "free some space or choose another --out directory",
    }.get(reason, "")
    return f"cannot {action} {path}: {reason}" + (f" ({hint})" if hint else "")


@contextlib.contextmanager
def os_errors(path: str | Path, action: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into an :class:`ArtifactError` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise ArtifactError(os_error_message(path, action, e)) from None


# ---------------------------------------------------------------------------- checksums


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with os_errors(path, "read"), open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path, expected: str, what: str, remedy: str) -> None:
    """Raise :class:`ArtifactError` unless ``path`` exists and its sha256 is ``expected``."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{what} {p} is missing; {remedy}")
    actual = sha256_file(p)
    if actual != expected:
        raise ArtifactError(
            f"{what} {p} is corrupted or was changed after kdistill wrote it (sha256 "
            f"{actual[:12]}, recorded {expected[:12]}); {remedy}"
        )


def jsonable(value: Any) -> Any:
    """JSON has no NaN or Inf: such values become null (metrics lines, run records)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def canonical_json(data: Any) -> str:
    """The one JSON text of ``data`` that checksums are computed over (sorted keys, compact)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------- atomic writes


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: read once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Raises:
        ArtifactError: the file cannot be written (read-only, full disk, permissions).
    """
    target = Path(path)
    with os_errors(target, "write"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent
        )
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with os_errors(target, "write"):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            # mkstemp creates the file private (0600); give it the permissions of a plain
            # open() so that shared caches and run directories stay readable by the team.
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(os_error_message(target, "write", e)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy ``source`` over ``target`` atomically."""
    with atomic_path(target) as tmp, os_errors(source, "read"):
        shutil.copyfile(source, tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (whose old
    content is removed), on error it is removed. Readers never see a half-made directory."""
    target = Path(path)
    with os_errors(target, "write"):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        )
    try:
        yield tmp
        with os_errors(target, "write"):
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove what interrupted atomic writes left in ``directory`` and below (``.*.tmp`` files
    and folders). Call it only while holding the directory's lock: then no writer is alive."""
    root = Path(directory)
    if not root.is_dir():
        return []
    stale = sorted(
        (p for p in root.rglob(f".*{TEMP_SUFFIX}") if p.name.startswith(".")),
        key=lambda p: len(p.parts),
    )
    removed = []
    for p in stale:
        if not p.exists():  # inside a folder removed just before
            continue
        with os_errors(p, "remove"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------- reading


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; any failure names the file and what it is."""
    p = Path(path)
    with os_errors(p, "read"):
        text = p.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(
            f"{what} {p} is not valid JSON ({e}); it is torn or corrupted"
        ) from None


def read_jsonl(path: str | Path, what: str) -> list[Any]:
    """Parse a JSON-lines file; a torn or garbage line is an error naming the file and line."""
    p = Path(path)
    with os_errors(p, "read"):
        lines = p.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ArtifactError(
                f"{what} {p} line {number} is not valid JSON; it is torn or corrupted"
            ) from None
    return rows
