"""``EnsembleTeacher``: several teachers acting as one (Hinton et al. 2015 distilled an ensemble)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from torch import Tensor, nn

from kdistill.losses.functional import check_temperature, softmax_with_temperature
from kdistill.teachers.frozen import as_teacher
from kdistill.types import TeacherOutput

EnsembleReduce = Literal["probs", "logits"]
_REDUCES = get_args(EnsembleReduce)


class EnsembleTeacher(nn.Module):
    """Weighted average of several teachers.

    Args:
        teachers: the members: teacher objects (anything returning a :class:`TeacherOutput`
            with logits, e.g. :class:`FrozenTeacher`) or plain trained ``nn.Module`` s, which are
            wrapped in :class:`FrozenTeacher`.
        weights: one non-negative weight per member (normalized to sum 1); default equal.
        reduce: ``"probs"`` (default) averages the members' probabilities at the distillation
            temperature: the soft target is the mixture ``sum_i w_i softmax(z_i / T)``.
            ``"logits"`` averages raw logits, ``sum_i w_i z_i``, and leaves the temperature to
            the loss (a geometric mean of the members' distributions).
        temperature: the distillation temperature; required with ``reduce="probs"``, because
            the average of probabilities depends on it. It must equal the loss's temperature
            (the loss checks).

    Returns (when called): :class:`TeacherOutput` with ``probs`` at ``temperature`` for
    ``"probs"``, with ``logits`` for ``"logits"``.
    """

    is_teacher = True

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        reduce: EnsembleReduce = "probs",
        *,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("EnsembleTeacher needs at least one teacher, got an empty list")
        if reduce not in _REDUCES:
            raise ValueError(f"reduce must be one of {_REDUCES}, got {reduce!r}")
        if reduce == "probs":
            if temperature is None:
                raise ValueError(
                    "EnsembleTeacher(reduce='probs') averages probabilities at the distillation "
                    "temperature: pass temperature= (the same T as the loss)"
                )
            temperature = check_temperature(temperature)
        elif temperature is not None:
            temperature = check_temperature(temperature)
        if weights is None:
            weights = [1.0] * len(teachers)
        if len(weights) != len(teachers):
            raise ValueError(
                f"EnsembleTeacher got {len(weights)} weights for {len(teachers)} teachers; give one "
                "weight per teacher"
            )
        if any(not (float(w) >= 0) for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"ensemble weights must be >= 0 with a positive sum, got {list(weights)}"
            )
        total = float(sum(weights))
        self.weights = tuple(float(w) / total for w in weights)
        self.members = nn.ModuleList(as_teacher(t) for t in teachers)
        self.reduce: EnsembleReduce = reduce
        self.temperature = temperature

    def forward(
        self,
        inputs: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> TeacherOutput:
        acc: Tensor | None = None
        for weight, member in zip(self.weights, self.members, strict=True):
            out = member(inputs, sample_ids=sample_ids, views=views)
            if not isinstance(out, TeacherOutput) or out.logits is None:
                raise ValueError(
                    f"ensemble member {type(member).__name__} must return TeacherOutput(logits=...)"
                )
            if self.reduce == "probs":
                term = softmax_with_temperature(out.logits, self.temperature) * weight  # type: ignore[arg-type]
            else:
                term = out.logits.float() * weight
            acc = term if acc is None else acc + term
        assert acc is not None
        if self.reduce == "probs":
            return TeacherOutput(probs=acc, temperature=self.temperature)
        return TeacherOutput(logits=acc)

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}, weights={self.weights}, temperature={self.temperature}"
