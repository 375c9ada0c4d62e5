"""Rules shared by the config schema and the tensor code, without torch: one source for each.

The config schema checks a YAML value with the same function that a loss or teacher built from
Python uses, so a rule (what a temperature may be, how ``beta = None`` resolves, how ensemble
weights normalize, when an epoch is inside a window) is written once. This module imports
nothing of kdistill's and never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

EnsembleReduce = Literal["probs", "logits"]
"""How ensemble members combine: the mean of their probabilities at T, or of their logits."""
ENSEMBLE_REDUCES: tuple[str, ...] = get_args(EnsembleReduce)

BatchNormPolicy = Literal["frozen", "batch_stats"]
"""A frozen teacher's BatchNorm: its running statistics, or each batch's (never updated)."""
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
