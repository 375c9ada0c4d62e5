"""``load_model``: a model file (or a finished run) back into a ready network.

The file's spec names the architecture and the structure compression gave it (pruned channels,
fake quantization); the weights are checked against their digest and must fit exactly. An
import-path architecture is built only when the caller trusts it (:mod:`kdistill.trust`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.compression.rebuild import apply_structure
from kdistill.models import (
    ModelFileError,
    ModelSpec,
    ResolvedModel,
    load_weights,
    read_model_file,
    resolve_model,
)
from kdistill.models.foreign import PICKLE_SUFFIXES
from kdistill.trust import NO_TRUST, CodeTrust


def build_from_spec(
    spec: ModelSpec, *, trust: CodeTrust = NO_TRUST, quantized: bool = True
) -> nn.Module:
    """A freshly initialized network with the architecture and the compressed structure a spec
    records (the fake-quantized graph of a QAT model unless ``quantized=False``)."""
    model = spec.build_architecture(trust=trust)
    if spec.compressed:
        model = apply_structure(model, spec.extra, tuple(spec.input_shape), quantized=quantized)
    return model


@dataclass(frozen=True)
class LoadedModel:
    """A network rebuilt from a model file.

    Attributes:
        model: the network, weights loaded, in eval mode.
        spec: what the file records.
        source: the file and, for a finished run, its run record.
        checked: whether the weights' digest was verified (files older than the digest are not).
    """

    model: nn.Module
    spec: ModelSpec
    source: ResolvedModel
    checked: bool

    def __iter__(self) -> Any:  # ``model, spec = load_model(...)``
        return iter((self.model, self.spec))


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    args: Mapping[str, Any] | None = None,
    trust: CodeTrust = NO_TRUST,
) -> LoadedModel:
    """Rebuild a network from a model file, a finished run directory or a checkpoint directory.

    Args:
        path: where the model is.
        arch, args: optional expectations; a mismatch with the file's record is an error. An
            ``arch`` given here is the caller's own, so it is trusted even if it is an import path.
        trust: the import paths the file may name besides ``arch`` (default: none, so a file
            can only name registered architectures).

    Raises:
        ModelFileError: missing, unfinished, corrupted or mismatching files.
        UntrustedCodeError: the file names an import path that neither ``arch`` nor ``trust``
            allows; nothing was imported.
    """
    if Path(path).suffix in PICKLE_SUFFIXES and Path(path).is_file():
        raise ModelFileError(
            f"{path} is a plain PyTorch checkpoint, which records no architecture: use it as a "
            "teacher (kd.teachers[i].checkpoint with kd.teachers[i].arch) or as a starting point "
            "(model.checkpoint with model.arch); kdistill eval and export read files kdistill wrote"
        )
    source = resolve_model(path)
    file = read_model_file(source.file)
    spec = file.spec
    assert spec is not None  # read_model_file requires one
    if arch is not None and arch != spec.arch:
        raise ModelFileError(
            f"{source.file} holds a {spec.arch!r} model but {arch!r} was asked for; drop the arch "
            "setting (the file records it) or point at the right file"
        )
    if args and dict(args) != dict(spec.args):
        raise ModelFileError(
            f"{source.file} was built with args {dict(spec.args)}, not {dict(args)}"
        )
    if arch is not None:
        trust = CodeTrust(trust.paths | {arch}, trust.everything)
    model = build_from_spec(spec, trust=trust)
    load_weights(model, file)
    model.eval()  # (a QAT graph's eval() returns None: do not chain it)
    return LoadedModel(model, spec, source, file.checked)


def check_model_fits_data(spec: ModelSpec, data: Any, what: str) -> None:
    """``ValueError`` unless the model predicts the data's classes from its input shape."""
    if spec.num_classes != data.num_classes:
        raise ValueError(
            f"{what} predicts {spec.num_classes} classes but {data.name} has {data.num_classes}"
        )
    if tuple(spec.input_shape) != tuple(data.input_shape):
        raise ValueError(
            f"{what} takes inputs of shape {tuple(spec.input_shape)} but {data.name} samples are "
            f"{tuple(data.input_shape)}"
        )


def data_of_model(spec: ModelSpec, *, dataset: str | None = None, data_root: str | None = None):
    """The data a model file was trained on, rebuilt from its record (dataset, root, split seed,
    image size), or another ``dataset`` with the same classes and input shape."""
    from kdistill.config.schema import DataConfig
    from kdistill.data import build_data

    recorded = dict(spec.extra.get("data", {}))
    if dataset is not None and dataset != recorded.get("name"):
        recorded = {"name": dataset}
    if data_root is not None:
        recorded["root"] = data_root
    recorded.setdefault("name", spec.dataset or "digits")
    data_cfg = DataConfig(
        **{k: v for k, v in recorded.items() if k in DataConfig.__dataclass_fields__}
    )
    data = build_data(data_cfg)
    check_model_fits_data(spec, data, "the model")
    return data
