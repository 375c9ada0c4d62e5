"""Rules shared by the config schema and the tensor code, without torch: one source for each.

The config schema checks a YAML value with the same function that a loss or teacher built from
Python uses, so a rule (what a temperature may be, how ``beta = None`` resolves, how ensemble
weights normalize, when an epoch is inside a window) is written once. This module imports
nothing of kdistill's and never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

EnsembleReduce = Literal["probs", "logits"]
"""How ensemble members combine: the mean of their probabilities at T, or of their logits."""
ENSEMBLE_REDUCES: tuple[str, ...] = get_args(EnsembleReduce)

BatchNormPolicy = Literal["frozen", "batch_stats"]
# a language model's token-level divergences (kdistill.losses.tokens)
DivergenceKind = Literal[
    "forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"
]
"""A frozen teacher's BatchNorm: its running statistics, or each batch's (never updated)."""
# a language model with its own vocabulary (kdistill.losses.cross_vocab)
CrossTokenizerMethod = Literal["spans", "uld"]
CROSS_TOKENIZER_METHODS: tuple[str, ...] = get_args(CrossTokenizerMethod)

BPE_PREFIX = "bpe:"
BPE_VOCAB_RANGE = (260, 1 << 20)  # the 256 bytes, the end-of-text token and a few merges


def bpe_vocab_size(name: str | None) -> int | None:
    """The vocabulary size ``data.tokenizer: bpe:<N>`` asks for; ``None`` for any other name.

    Raises:
        ValueError: ``bpe:`` followed by anything but a whole number in range.
    """
    if name is None or not name.startswith(BPE_PREFIX):
        return None
    size = name[len(BPE_PREFIX) :]
    low, high = BPE_VOCAB_RANGE
    if not size.isdigit() or not low <= int(size) <= high:
        raise ConfigError(
            f"data.tokenizer {name!r}: bpe:<vocab> trains a byte-level BPE tokenizer of <vocab> "
            f"tokens on the training text; <vocab> must be a whole number in [{low}, {high:,}] "
            f"(4096 to 16384 is typical), got {size!r}"
        )
    return int(size)


BN_POLICIES: tuple[str, ...] = get_args(BatchNormPolicy)

QUANT_SETTINGS = (
    "weight_bits",
    "activation_bits",
    "weight_symmetric",
    "activation_symmetric",
    "weight_per_channel",
)
"""The per-layer settings of quantization-aware training (policy fields and override keys)."""

TEMPERATURE_RTOL = 1e-6
"""Two temperatures closer than this (relative) are the same one (e.g. after a float16 trip)."""


class ConfigError(ValueError):
    """A configuration value, key or file that cannot be used (also exported as
    ``kdistill.config.ConfigError``)."""


def doc(text: str, default: Any = None, *, factory: Any = None) -> Any:
    """A dataclass field with a one-line description (rendered into ``docs/config.md``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    require(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """``temperature`` as a float; ``ValueError`` unless it is a finite number > 0."""
    require(
        is_number(temperature) and math.isfinite(temperature) and temperature > 0,
        f"{name} must be a finite number > 0 (useful range 1..20), got {temperature!r}",
    )
    return float(temperature)


def merge_temperature(reduce: Any, temperature: Any, what: str) -> float | None:
    """The temperature an ensemble of teachers is merged at, checked: ``reduce`` must be one
    of :data:`ENSEMBLE_REDUCES`, and merging by probability needs the temperature (the members'
    probabilities are averaged at the distillation temperature)."""
    check_choice("reduce", reduce, ENSEMBLE_REDUCES)
    if temperature is not None:
        temperature = check_temperature(temperature)
    require(
        reduce != "probs" or temperature is not None,
        f"{what}: merging ensemble members by probability averages them at the distillation "
        "temperature: pass temperature= (the same T as the loss)",
    )
    return temperature


def same_temperature(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TEMPERATURE_RTOL)


def resolve_weights(
    alpha: Any, beta: Any, teacher_weight: Any = 0.0, *, prefix: str = ""
) -> tuple[float, float, float]:
    """Validate the loss weights and resolve ``beta=None`` to ``1 - alpha``.

    Args:
        alpha: weight of the student loss (cross-entropy against hard labels at T=1).
        beta: weight of the distillation loss; ``None`` means ``1 - alpha`` (Hinton's weighted
            average, which then needs ``0 <= alpha <= 1``).
        teacher_weight: weight of the teacher's own hard-label loss (joint training).
        prefix: how the names appear in messages (``"kd."`` for the config).

    Returns:
        ``(alpha, beta, teacher_weight)`` as floats.
    """
    values = {"alpha": alpha, "teacher_weight": teacher_weight}
    if beta is not None:
        values["beta"] = beta
    for name, value in values.items():
        require(
            is_number(value) and math.isfinite(value) and value >= 0,
            f"{prefix}{name} must be a finite number >= 0, got {value!r}",
        )
    if beta is None:
        require(
            alpha <= 1,
            f"{prefix}beta=None means beta = 1 - alpha, which needs alpha <= 1; got "
            f"{prefix}alpha={alpha}. Give {prefix}beta explicitly for free weights (e.g. alpha=1, "
            "beta=0.5).",
        )
        beta = 1.0 - float(alpha)
    require(
        alpha > 0 or beta > 0,
        f"{prefix}alpha (student loss weight) and {prefix}beta (distillation loss weight) are "
        "both 0: nothing would train the student; set at least one of them > 0",
    )
    return float(alpha), float(beta), float(teacher_weight)


def normalized_weights(
    weights: Sequence[Any] | None, count: int, name: str = "ensemble weights"
) -> tuple[float, ...]:
    """One weight per ensemble member, scaled to sum to 1 (``None``: equal weights)."""
    require(count >= 1, f"an ensemble needs at least one member, got {count}")
    if weights is None:
        return (1.0 / count,) * count
    require(
        len(weights) == count,
        f"{name}: {len(weights)} weights for {count} teachers; give one weight per teacher",
    )
    require(
        all(is_number(w) and math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0,
        f"{name} must be >= 0 with a positive sum, got {list(weights)}",
    )
    total = float(sum(weights))
    return tuple(float(w) / total for w in weights)


@dataclass(frozen=True)
class EpochWindow:
    """The epochs ``[start, end)`` (0-based) in which something acts; ``end=None``: to the end.

    The one rule for "is this epoch inside": distillation start/end, and every compression
    policy's ``starting_epoch`` / ``ending_epoch``.
    """

    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.start, int) and not isinstance(self.start, bool) and self.start >= 0,
            f"starting epoch must be an integer >= 0, got {self.start!r}",
        )
        require(
            self.end is None or (isinstance(self.end, int) and self.end > self.start),
            f"ending epoch ({self.end}) must be after starting epoch ({self.start}) or null",
        )

    def contains(self, epoch: int) -> bool:
        return epoch >= self.start and (self.end is None or epoch < self.end)

    def is_step(self, epoch: int, frequency: int) -> bool:
        """Whether ``epoch`` is inside and ``frequency`` epochs apart from the start (policies
        that act every ``frequency`` epochs)."""
        return self.contains(epoch) and (epoch - self.start) % frequency == 0

    def last(self, epochs: int) -> int:
        """The last epoch inside the window in a run of ``epochs`` epochs."""
        return epochs - 1 if self.end is None else min(self.end, epochs) - 1


# ----------------------------------------------------------------------------- typed fields
# One checker of a value against a field's annotation, for both ways a config is made: the YAML
# loader (which also builds nested dataclasses from mappings) and a config built in Python
# (each schema dataclass calls check_fields first in __post_init__), so both refuse the same
# values with the same messages.

Build = Callable[[type, Mapping[str, Any], str], Any]
"""How a mapping becomes the dataclass ``cls`` at ``path`` (the YAML loader's ``from_dict``)."""


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce(value: Any, tp: Any, path: str, build: Build | None = None) -> Any:
    """``value`` checked against the annotation ``tp`` (YAML's int for a float becomes a float,
    a list for a tuple becomes a tuple); :class:`ConfigError` naming ``path``, the value and what is
    valid otherwise. ``build`` turns a mapping into a dataclass (``None``: only instances)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        tagged = _tagged_options(options)
        if tagged:
            return _coerce_tagged(value, tagged, path, build)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path} must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, path, build)
            except ValueError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: " + "; ".join(errors))
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) or value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{path} must be one of {', '.join(map(str, choices))}; got {value!r}{hint}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if build is not None and isinstance(value, Mapping):
            return build(tp, value, path)
        article = "an" if tp.__name__[0] in "AEIOU" else "a"
        wanted = (
            f"a mapping of {tp.__name__} keys" if build is not None else f"{article} {tp.__name__}"
        )
        raise ConfigError(f"{path} must be {wanted}, got {describe(value)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path} must be a number, got {describe(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return value if type(value) is float else float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {describe(value)}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(coerce(v, args[0], f"{path}[{i}]", build) for i, v in enumerate(value))
        else:
            if len(value) != len(args):
                raise ConfigError(f"{path} must be a list of {len(args)} values, got {len(value)}")
            items = tuple(
                coerce(v, a, f"{path}[{i}]", build) for i, (v, a) in enumerate(zip(value, args))
            )
        return value if _same_items(value, items, tuple) else items
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {describe(value)}")
        (item_type,) = get_args(tp)
        items_list = [coerce(v, item_type, f"{path}[{i}]", build) for i, v in enumerate(value)]
        return value if _same_items(value, items_list, list) else items_list
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {describe(value)}")
        key_type, value_type = get_args(tp)
        mapping = {
            coerce(k, key_type, f"{path} key", build): coerce(v, value_type, f"{path}.{k}", build)
            for k, v in value.items()
        }
        return value if isinstance(value, dict) and _same_mapping(value, mapping) else mapping
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a schema bug, not user input


def _same_items(value: Any, items: Sequence[Any], kind: type) -> bool:
    return type(value) is kind and all(a is b for a, b in zip(value, items))


def _same_mapping(value: Mapping[Any, Any], mapping: Mapping[Any, Any]) -> bool:
    return all(k in value and value[k] is v for k, v in mapping.items())


def _tagged_options(options: tuple[Any, ...]) -> dict[str, type]:
    """``{kind: dataclass}`` when every option is a dataclass with a ``kind`` literal, else {}."""
    table: dict[str, type] = {}
    for option in options:
        if not dataclasses.is_dataclass(option):
            return {}
        kind = _hints(option).get("kind")
        if get_origin(kind) is not Literal:
            return {}
        (name,) = get_args(kind)
        table[name] = option
    return table


def _coerce_tagged(value: Any, table: Mapping[str, type], path: str, build: Build | None) -> Any:
    """A mapping with ``kind: name`` -> the dataclass registered for that name."""
    if isinstance(value, tuple(table.values())):
        return value
    if build is None:
        raise ConfigError(
            f"{path} must be one of {', '.join(t.__name__ for t in table.values())}, got "
            f"{describe(value)}"
        )
    if not isinstance(value, Mapping) or "kind" not in value:
        raise ConfigError(
            f"{path} must be a mapping with kind: one of {', '.join(table)}; got {describe(value)}"
        )
    kind = value["kind"]
    if kind not in table:
        close = difflib.get_close_matches(str(kind), list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}.kind must be one of {', '.join(table)}; got {kind!r}{hint}")
    return build(table[kind], value, path)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """``get_type_hints(cls)``, once per class (a config is checked at every construction)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of the dataclass ``cls``."""
    return _hints(cls)


def check_fields(obj: Any, section: str) -> None:
    """Check every field of the frozen dataclass ``obj`` against its annotation, exactly as the
    YAML loader checks it (``section``: where the object sits in a config, e.g. ``"optim"``);
    values YAML would convert (an int for a float, a list for a tuple) are converted."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        checked = coerce(value, hints[f.name], f"{section}.{f.name}" if section else f.name)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)
