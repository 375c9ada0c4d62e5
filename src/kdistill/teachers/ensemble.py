"""``EnsembleTeacher``: several teachers acting as one (Hinton et al. 2015 distilled an ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdistill.losses.ensemble import merge_members
from kdistill.teachers.frozen import as_teacher
from kdistill.types import TeacherOutput
from kdistill.validation import (
    EnsembleReduce,
    merge_temperature,
    normalized_weights,
)


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
        temperature = merge_temperature(reduce, temperature, f"EnsembleTeacher(reduce={reduce!r})")
        self.weights = normalized_weights(weights, len(teachers))
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
        member_logits = []
        for member in self.members:
            out = member(inputs, sample_ids=sample_ids, views=views)
            if not isinstance(out, TeacherOutput) or out.logits is None:
                raise ValueError(
                    f"ensemble member {type(member).__name__} must return TeacherOutput(logits=...)"
                )
            member_logits.append(out.logits)
        return merge_members(
            torch.stack(member_logits, dim=1), self.weights, self.reduce, self.temperature
        )

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}, weights={self.weights}, temperature={self.temperature}"
