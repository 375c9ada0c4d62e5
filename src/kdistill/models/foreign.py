"""Weights trained elsewhere: a plain PyTorch state dict (``.pt``, ``.pth``, Distiller's
``.pth.tar``) or a ``.safetensors`` file without kdistill's metadata.

Such a file holds tensors but not the architecture, so the caller names it (``arch``); the
weights must then fit that architecture exactly, and a mismatch lists the missing, unexpected
and differently shaped tensors. Pickle-based files are read with ``torch.load(weights_only=True)``,
which refuses any file that would need arbitrary code to unpickle.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdistill.files import os_errors
from kdistill.models.spec import ModelFileError

PICKLE_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt")
# Keys under which training scripts nest the model's weights (Distiller: state_dict;
# torchvision references: model; Lightning: state_dict; others: model_state_dict, net).
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_LISTED = 8


def is_plain_state_dict(path: str | Path) -> bool:
    """Whether ``path`` is a file kdistill reads as bare weights (a pickle-format checkpoint,
    or a ``.safetensors`` file without kdistill's metadata)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix in PICKLE_SUFFIXES:
        return True
    if p.suffix == ".safetensors":
        from kdistill.models.files import SPEC_KEY, _metadata

        try:
            return SPEC_KEY not in _metadata(p)
        except ModelFileError:
            return False
    return False


def _tensors(value: object) -> dict[str, Tensor] | None:
    if isinstance(value, Mapping) and value and all(isinstance(v, Tensor) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    return None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights in ``path``, unwrapped from a checkpoint's nesting, ``module.`` prefixes (of
    ``DataParallel`` / ``DistributedDataParallel``) removed.

    Raises:
        ModelFileError: unreadable, needs arbitrary unpickling, or holds no tensors.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            with os_errors(p, "read"):
                raw: object = load_file(str(p))
        except OSError:
            raise
        except Exception as e:
            raise ModelFileError(f"{p}: not a readable .safetensors file ({e})") from None
    else:
        try:
            with os_errors(p, "read"):
                raw = torch.load(str(p), map_location="cpu", weights_only=True)
        except OSError:
            raise
        except pickle.UnpicklingError as e:
            raise ModelFileError(
                f"{p} stores Python objects besides tensors, and unpickling them could run code, "
                "so kdistill does not load it (torch.load(weights_only=True) refused: "
                f"{str(e).splitlines()[0][:160]}). Where you trust the file, keep its weights "
                "alone, in the environment that wrote it (for a Distiller checkpoint, Distiller's "
                "own, whose classes the file names: its optimizer type, compression schedule and "
                "quantizer): python -c \"import torch; c = torch.load('CKPT', weights_only=False); "
                "torch.save({'arch': c.get('arch'), 'state_dict': c['state_dict']}, "
                "'weights.pth.tar')\""
            ) from None
        except Exception as e:
            raise ModelFileError(f"{p}: not a readable PyTorch checkpoint ({e})") from None
    state = _tensors(raw)
    if state is None and isinstance(raw, Mapping):
        for key in NESTED_KEYS:
            state = _tensors(raw.get(key))
            if state is not None:
                break
    if state is None:
        found = ", ".join(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ModelFileError(
            f"{p} holds no state dict (a mapping of names to tensors), directly or under "
            f"{', '.join(NESTED_KEYS)}; found: {found[:200]}"
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def checkpoint_arch(path: str | Path) -> str | None:
    """The architecture name a checkpoint records beside its weights (Distiller's ``arch``),
    or ``None``. Read with ``weights_only=True`` like the weights."""
    p = Path(path)
    if p.suffix not in PICKLE_SUFFIXES:
        return None
    try:
        raw = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception:  # the weights' own reading says what is wrong with the file
        return None
    arch = raw.get("arch") if isinstance(raw, Mapping) else None
    return arch if isinstance(arch, str) and arch else None


def recorded_arch(path: str | Path, what: str) -> str | None:
    """The registry architecture a checkpoint names (Distiller's model names mapped to
    kdistill's), or ``None`` when it names none. A file never chooses code: an import path
    recorded in it is refused."""
    from kdistill.interop.distiller import DistillerError, map_arch
    from kdistill.trust import is_import_path

    name = checkpoint_arch(path)
    if name is None:
        return None
    try:
        arch = map_arch(name, flag=f"{what} {path} records arch")
    except DistillerError as e:
        raise ModelFileError(f"{e}; name the architecture yourself") from None
    if is_import_path(arch):
        raise ModelFileError(
            f"{what}: {path} records the import path {name!r} as its architecture; kdistill "
            "does not import code a file names. Name the architecture yourself"
        )
    return arch


def load_plain_weights(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch is a ``ModelFileError`` that lists
    the missing, unexpected and differently shaped tensors."""
    own = model.state_dict()
    # A model kdistill wraps (a Hugging Face classifier under ``model.``) reads the weights its
    # library saved, which lack the wrapper's prefix.
    wrapper = "model."
    if set(state) != set(own) and {wrapper + k for k in state} == set(own):
        state = {wrapper + k: v for k, v in state.items()}
    # Distiller wraps only the features of AlexNet and VGG in DataParallel.
    if set(state) != set(own) and {k.replace(".module.", ".") for k in state} == set(own):
        state = {k.replace(".module.", "."): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} (the architecture has {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    # no silent casts: a float64 or float16 checkpoint is converted by its owner, knowingly
    dtypes = [
        f"{k} {state[k].dtype} (the architecture has {own[k].dtype})"
        for k in own
        if k in state and state[k].dtype != own[k].dtype
    ]
    problems = []
    for label, items in (
        ("missing", missing), ("unexpected", unexpected), ("shape", shapes), ("dtype", dtypes)
    ):  # fmt: skip
        if items:
            more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            problems.append(f"{label}: {', '.join(items[:_LISTED])}{more}")
    if problems:
        raise ModelFileError(
            f"{what}: the weights do not fit the architecture ({'; '.join(problems)}). Check "
            "the architecture and its arguments (number of classes, input channels)"
        )
    model.load_state_dict(dict(state), strict=True)
