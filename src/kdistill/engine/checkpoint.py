"""Model files and training checkpoints, written atomically and read without unpickling code.

* A **model file** is a ``.safetensors`` file whose metadata records how to rebuild the network
  (architecture, its arguments, input shape, classes, and the input normalization it was trained
  with), so ``kdistill eval model.safetensors`` needs nothing else.
* A **checkpoint** is a directory ``checkpoints/epoch-NNNN/`` holding ``model.safetensors`` and
  ``state.pt`` (optimizer, schedule position, RNG states, ...; read with
  ``torch.load(weights_only=True)``). It is assembled in a temporary directory and renamed into
  place, and ``checkpoints/latest.json`` (itself replaced atomically) names the newest complete
  one. An interrupted write therefore never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from kdistill.atomic import atomic_path, atomic_write_text, fsync_dir
from kdistill.models import build_model
from kdistill.trust import NO_TRUST, CodeTrust

MODEL_FORMAT_VERSION = 1
_META_KEY = "kdistill"


class CheckpointError(ValueError):
    """A model file or checkpoint that is missing, incomplete or not kdistill's."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network and feed it correctly.

    Attributes:
        arch: registry name or import path.
        args: builder arguments.
        num_classes: output size.
        input_shape: one sample's shape, ``(C, H, W)`` or ``(F,)``.
        mean, std: input normalization used in training (``None``: inputs in [0, 1]).
        dataset: the dataset it was trained on.
        class_names: a name per class.
        extra: anything else a component needs to rebuild the model (e.g. compression state).
        origin: the file this spec was read from (``None``: made by this process). A spec read
            from a file names its architecture as data: :meth:`build` imports an import-path
            architecture only when the caller's :class:`~kdistill.trust.CodeTrust` allows it.
    """

    arch: str
    args: Mapping[str, Any]
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None
    class_names: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    origin: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> str:
        record = asdict(self)
        del record["origin"]  # where it is read from is not part of the record
        return json.dumps({"format_version": MODEL_FORMAT_VERSION, **record}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelSpec:
        """The spec recorded in a file, every field checked (the file may come from anyone)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise CheckpointError(f"{where}: kdistill metadata is not valid JSON") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: kdistill metadata must be a JSON object")
        version = data.pop("format_version", None)
        if version != MODEL_FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: model format version {version!r}, this kdistill reads "
                f"{MODEL_FORMAT_VERSION}"
            )
        known = {f.name for f in fields(cls)} - {"origin"}
        required = {"arch", "args", "num_classes", "input_shape"}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
        if problems:
            raise CheckpointError(
                f"{where}: kdistill metadata has {'; '.join(problems)} "
                f"(valid fields: {', '.join(sorted(known))})"
            )
        _check_spec_fields(data, where)
        data["input_shape"] = tuple(data["input_shape"])
        for key in ("mean", "std", "class_names"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data, origin=where)

    def build(self, *, quantized: bool = True, trust: CodeTrust = NO_TRUST) -> nn.Module:
        """A freshly initialized network of this architecture, with the structure its
        compression record describes (pruned channels; the fake-quantized graph unless
        ``quantized=False``).

        Raises:
            UntrustedCodeError: the spec was read from a file and names an import path that
                ``trust`` does not allow.
        """
        if self.origin is not None:
            trust.check(self.arch, self.origin)
        model = build_model(self.arch, self.num_classes, self.input_shape, self.args)
        if self.extra.get("layer_shapes") or self.extra.get("qat"):
            from kdistill.compression.rebuild import rebuild

            model = rebuild(model, self.extra, tuple(self.input_shape), quantized=quantized)
        return model


def _check_spec_fields(data: Mapping[str, Any], where: str) -> None:
    """Types of a model file's recorded fields (a wrong one would fail later, far from here)."""

    def numbers(value: Any) -> bool:
        return isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )

    checks = {
        "arch": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "args": (lambda v: isinstance(v, dict), "an object"),
        "num_classes": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "an integer >= 1",
        ),
        "input_shape": (
            lambda v: (
                isinstance(v, list)
                and len(v) in (1, 3)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)
            ),
            "a list of 1 or 3 positive integers",
        ),
        "mean": (lambda v: v is None or numbers(v), "null or a list of numbers"),
        "std": (lambda v: v is None or numbers(v), "null or a list of numbers"),
        "dataset": (lambda v: v is None or isinstance(v, str), "null or a string"),
        "class_names": (
            lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
            "a list of strings",
        ),
        "extra": (lambda v: isinstance(v, dict), "an object"),
    }
    for key, (ok, expected) in checks.items():
        if key in data and not ok(data[key]):
            raise CheckpointError(
                f"{where}: kdistill metadata field {key!r} must be {expected}, got {data[key]!r}"
            )


# ----------------------------------------------------------------------------- atomic files


def _state_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Clones make every tensor own its memory: safetensors refuses shared storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def save_model_file(path: str | Path, state_dict: Mapping[str, Tensor], spec: ModelSpec) -> int:
    """Atomically write a self-describing ``.safetensors`` model file; returns its size in bytes."""
    with atomic_path(path) as tmp:
        save_file(_state_tensors(state_dict), str(tmp), metadata={_META_KEY: spec.to_json()})
    return Path(path).stat().st_size


def resolve_model_path(path: str | Path) -> Path:
    """A model file path, given the file itself, a run directory or a checkpoint directory."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "model.safetensors", p / "best.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{p} is a directory without model.safetensors: is it a finished kdistill run? "
            "(an unfinished run has checkpoints/ and can be resumed with --resume)"
        )
    if not p.is_file():
        raise CheckpointError(f"model file {p} does not exist")
    return p


def read_model_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` recorded in a model file."""
    p = resolve_model_path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p}: not a readable .safetensors file ({e})") from None
    if _META_KEY not in meta:
        raise CheckpointError(
            f"{p}: a .safetensors file without kdistill metadata; give the architecture "
            "explicitly (arch/args) or save it with kdistill"
        )
    return ModelSpec.from_json(meta[_META_KEY], str(p))


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (no code is ever unpickled)."""
    p = resolve_model_path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable .safetensors file ({e})") from None


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    args: Mapping[str, Any] | None = None,
    trust: CodeTrust = NO_TRUST,
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a network from a model file and load its weights.

    Args:
        path: model file, run directory or checkpoint directory.
        arch, args: optional expectations; a mismatch with the file's record is an error. An
            ``arch`` given here is the caller's own, so it is trusted even if it is an import path.
        trust: the import paths the file may name besides ``arch`` (default: none, so a file
            can only name registered architectures).

    Raises:
        UntrustedCodeError: the file names an import path that neither ``arch`` nor ``trust``
            allows; nothing was imported.
    """
    spec = read_model_spec(path)
    if arch is not None and arch != spec.arch:
        raise CheckpointError(
            f"{path} holds a {spec.arch!r} model but {arch!r} was asked for; drop the arch "
            "setting (the file records it) or point at the right file"
        )
    if args and dict(args) != dict(spec.args):
        raise CheckpointError(f"{path} was built with args {dict(spec.args)}, not {dict(args)}")
    if arch is not None:
        trust = CodeTrust(trust.paths | {arch}, trust.everything)
    model = spec.build(trust=trust)
    load_weights(model, path)
    return model, spec


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a model file's tensors into ``model`` (all keys must match)."""
    tensors = load_state_file(path)
    # safetensors keeps tensors only, not the per-module version numbers a state_dict carries in
    # ``_metadata``; some modules (torchao's observers) treat a missing version as "old format"
    # and overwrite buffers such as eps. Our files are written by this code: use its versions.
    state: OrderedDict[str, Tensor] = OrderedDict(tensors)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from None


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    epoch: int,
    files: Mapping[str, tuple[Mapping[str, Tensor], ModelSpec]],
    state: Mapping[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/epoch-{epoch:04d}`` atomically and make it the latest.

    Args:
        run_dir: the run directory.
        epoch: the epoch just completed (0-based).
        files: model files to write, ``name -> (state_dict, spec)`` (e.g. ``"model"``).
        state: training state saved with ``torch.save`` (tensors and plain Python values only).
        keep: how many epoch checkpoints to keep.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        for stem, (tensors, spec) in files.items():
            save_model_file(tmp / f"{stem}.safetensors", tensors, spec)
        with open(tmp / "state.pt", "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        final = root / name
        if final.exists():  # a re-run of this epoch after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_text(root / "latest.json", json.dumps({"epoch": epoch, "dir": name}))
    epochs = sorted(p for p in root.glob("epoch-*") if p.is_dir())
    for old in epochs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or ``None``."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        path = root / info["dir"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{pointer} is unreadable; delete it to start over") from None
    if not (path / "state.pt").is_file():
        raise CheckpointError(f"{pointer} names {path}, which is incomplete or missing")
    return path


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a checkpoint (``weights_only``: no arbitrary objects)."""
    try:
        return torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{checkpoint / 'state.pt'}: cannot be read safely ({e})") from None
