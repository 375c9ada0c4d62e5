"""Model files: self-describing ``.safetensors`` files, checked when they are read.

A model file holds a network's tensors and, in its metadata, the :class:`ModelSpec` to rebuild
it and the sha256 of the tensors themselves (dtype, shape and bytes of each, by name). Reading
recomputes that digest, so flipped bytes are an error naming the file, not a model that is
silently wrong. Nothing is ever unpickled. Files written before the digest existed still load,
marked unchecked (:attr:`ModelFile.checked`).

A *run directory* given where a model is expected names its final ``model.safetensors``, and
only when the run finished (its run record exists and the file matches the record's checksum);
an unfinished run is refused unless a specific file inside it is named.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from kdistill.files import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    MODEL,
    RECORD,
    ArtifactError,
    atomic_path,
    os_errors,
)
from kdistill.models.spec import ModelFileError, ModelSpec
from kdistill.record import RunRecord

SPEC_KEY = "kdistill"
DIGEST_KEY = "kdistill_tensors_sha256"


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _state_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Clones make every tensor own its memory: safetensors refuses shared storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def save_model_file(
    path: str | Path, state_dict: Mapping[str, Tensor], spec: ModelSpec | None
) -> int:
    """Atomically write a ``.safetensors`` model file (with the spec and the tensors' digest in
    its metadata; ``spec=None`` for state that is not a standalone model); returns its size."""
    tensors = _state_tensors(state_dict)
    metadata = {DIGEST_KEY: tensors_digest(tensors)}
    if spec is not None:
        metadata[SPEC_KEY] = spec.to_json()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_metadata(tmp)
    return Path(path).stat().st_size


def _sort_metadata(path: Path) -> None:
    """Write the metadata keys of a safetensors file in sorted order, so that the same tensors
    and metadata give the same bytes (a user's ``sha256sum`` of two runs agrees): safetensors'
    writer keeps metadata in a hash map whose order changes from one process to the next. The
    header is rewritten in place, padded with spaces as the format allows."""
    with os_errors(path, "write"), open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # never: the same keys and values in another order
            raise ArtifactError(f"{path}: the sorted safetensors header does not fit in place")
        f.seek(8)
        f.write(text.ljust(size, b" "))


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points: the file, and the run record when it names a run."""

    file: Path
    record: RunRecord | None = None


def resolve_model(path: str | Path) -> ResolvedModel:
    """The model file meant by ``path``: the file itself, the final model of a *finished* run
    directory (checked against its run record), or a checkpoint directory's model.

    Raises:
        ModelFileError: missing file, unfinished run, or a file that differs from its record.
    """
    p = Path(path)
    if p.is_file():
        return ResolvedModel(p)
    if not p.exists():
        raise ModelFileError(f"model file {p} does not exist")
    if (p / RECORD).is_file():
        try:
            record = RunRecord.read(p)
        except ArtifactError as e:
            raise ModelFileError(str(e)) from None
        if not (p / MODEL).is_file():
            raise ModelFileError(f"the finished run {p} has no {MODEL}")
        return ResolvedModel(p / MODEL, record)
    if (p / CHECKPOINTS).is_dir() or (p / CONFIG).is_file():
        raise ModelFileError(
            f"{p} is an unfinished run (no run record): finish it with --resume, or name a "
            f"specific file to use it anyway (e.g. {p / CHECKPOINTS}/epoch-NNNN/{MODEL})"
        )
    for candidate in (p / MODEL, p / BEST):  # a checkpoint directory, or a folder of files
        if candidate.is_file():
            return ResolvedModel(candidate)
    raise ModelFileError(
        f"{p} is a directory without {MODEL}: is it a finished kdistill run? "
        "(an unfinished run has checkpoints/ and can be resumed with --resume)"
    )


def resolve_model_path(path: str | Path) -> Path:
    return resolve_model(path).file


@dataclass(frozen=True)
class ModelFile:
    """A model file's content: its spec, its tensors, and whether its digest was checked."""

    path: Path
    spec: ModelSpec | None
    tensors: dict[str, Tensor]
    checked: bool


def _metadata(path: Path) -> dict[str, str]:
    try:
        with os_errors(path, "read"), safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except ArtifactError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise ModelFileError(f"{path}: not a readable .safetensors file ({e})") from None


def read_model_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` recorded in a model file (or a finished run's model file)."""
    p = resolve_model_path(path)
    meta = _metadata(p)
    if SPEC_KEY not in meta:
        raise ModelFileError(
            f"{p}: a .safetensors file without kdistill metadata; give the architecture "
            "explicitly (arch/args) or save it with kdistill"
        )
    return ModelSpec.from_json(meta[SPEC_KEY], str(p))


def read_model_file(path: str | Path, *, need_spec: bool = True) -> ModelFile:
    """The spec and tensors of a model file, its digest verified (no code is ever unpickled)."""
    p = resolve_model_path(path)
    meta = _metadata(p)
    spec = None
    if SPEC_KEY in meta:
        spec = ModelSpec.from_json(meta[SPEC_KEY], str(p))
    elif need_spec:
        raise ModelFileError(
            f"{p}: a .safetensors file without kdistill metadata; give the architecture "
            "explicitly (arch/args) or save it with kdistill"
        )
    try:
        with os_errors(p, "read"), safe_open(str(p), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no __iter__
    except ArtifactError:
        raise
    except Exception as e:
        raise ModelFileError(f"{p}: not a readable .safetensors file ({e})") from None
    recorded = meta.get(DIGEST_KEY)
    if recorded is not None and recorded != tensors_digest(tensors):
        raise ModelFileError(
            f"{p}: the weights are corrupted or were changed after kdistill wrote them (their "
            "digest does not match the one recorded in the file); restore the file or train "
            "the model again"
        )
    return ModelFile(p, spec, tensors, checked=recorded is not None)


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a model file (digest verified)."""
    return read_model_file(path, need_spec=False).tensors


def load_weights(model: nn.Module, source: str | Path | ModelFile) -> None:
    """Load a model file's tensors into ``model``: every key, shape and dtype must match.

    Raises:
        ModelFileError: missing or unexpected keys, other shapes, or other dtypes (a float64
            or integer file is not silently cast into a float32 model).
    """
    file = source if isinstance(source, ModelFile) else read_model_file(source, need_spec=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(file.tensors))
    unexpected = sorted(set(file.tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    for name in sorted(set(expected) & set(file.tensors)):
        want, got = expected[name], file.tensors[name]
        if want.dtype != got.dtype:
            problems.append(f"{name} is {got.dtype}, the model needs {want.dtype}")
    if problems:
        raise ModelFileError(f"{file.path}: weights do not fit the model: {'; '.join(problems)}")
    # safetensors keeps tensors only, not the per-module version numbers a state_dict carries in
    # ``_metadata``; some modules (torchao's observers) treat a missing version as "old format"
    # and overwrite buffers such as eps. Our files are written by this code: use its versions.
    state: OrderedDict[str, Tensor] = OrderedDict(file.tensors)
    state._metadata = getattr(expected, "_metadata", None)  # type: ignore[attr-defined]
    try:  # shapes are checked here (observers resize their empty buffers themselves)
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())  # one line
        raise ModelFileError(f"{file.path}: weights do not fit the model: {detail}") from None
