"""``ModelSpec``: everything needed to rebuild a network and feed it correctly.

A model file records its spec as JSON in its metadata; :meth:`ModelSpec.from_json` checks every
field, because the file may come from anyone, and remembers where it was read from, so that
building it imports an import-path architecture only when the caller trusts that path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from kdistill.models.errors import ModelFileError
from kdistill.models.registry import build_model
from kdistill.trust import NO_TRUST, CodeTrust

SPEC_FORMAT_VERSION = 1


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
        return json.dumps({"format_version": SPEC_FORMAT_VERSION, **record}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelSpec:
        """The spec recorded in a file, every field checked (the file may come from anyone)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ModelFileError(f"{where}: kdistill metadata is not valid JSON") from None
        if not isinstance(data, dict):
            raise ModelFileError(f"{where}: kdistill metadata must be a JSON object")
        version = data.pop("format_version", None)
        if version != SPEC_FORMAT_VERSION:
            raise ModelFileError(
                f"{where}: model format version {version!r}, this kdistill reads "
                f"{SPEC_FORMAT_VERSION}"
            )
        known = {f.name for f in fields(cls)} - {"origin"}
        required = {"arch", "args", "num_classes", "input_shape"}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
        if problems:
            raise ModelFileError(
                f"{where}: kdistill metadata has {'; '.join(problems)} "
                f"(valid fields: {', '.join(sorted(known))})"
            )
        _check_spec_fields(data, where)
        data["input_shape"] = tuple(data["input_shape"])
        for key in ("mean", "std", "class_names"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data, origin=where)

    def build_architecture(self, *, trust: CodeTrust = NO_TRUST) -> nn.Module:
        """A freshly initialized network of this architecture, as its builder makes it: before
        any compression changed it (a model file of a compressed student also records the
        structure compression gave it, in ``extra``: ``kdistill.load_model`` rebuilds that).

        Raises:
            UntrustedCodeError: the spec was read from a file and names an import path that
                ``trust`` does not allow.
        """
        if self.origin is not None:
            trust.check(self.arch, self.origin)
        return build_model(self.arch, self.num_classes, self.input_shape, self.args)

    @property
    def compressed(self) -> bool:
        """Whether compression changed the structure (pruned channels, fake quantization)."""
        return bool(
            self.extra.get("layer_shapes")
            or self.extra.get("qat")
            or self.extra.get("lm_qat")
            or self.extra.get("lora")
        )


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
            raise ModelFileError(
                f"{where}: kdistill metadata field {key!r} must be {expected}, got {data[key]!r}"
            )
