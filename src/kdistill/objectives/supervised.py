"""``Supervised``: plain cross-entropy training behind the same interface as ``Distiller``.

The trainer runs teachers, scratch students and distilled students alike through an
*objective* (:class:`kdistill.objectives.Objective`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from kdistill.losses.functional import student_cross_entropy
from kdistill.types import DistillerOutput, LossOutput, StudentOutput, logits_of


class Supervised(nn.Module):
    """Cross-entropy against hard labels; ``student`` is the model being trained.

    Args:
        student: the network (a teacher being trained is a "student" of the labels here).
        ignore_index: label of unlabelled samples.
    """

    def __init__(self, student: nn.Module, *, ignore_index: int = -100) -> None:
        super().__init__()
        self.student = student
        self.ignore_index = int(ignore_index)

    def set_epoch(self, epoch: int) -> None:
        """No schedule of its own; present so every objective can be told the epoch."""

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        logits = logits_of(self.student(inputs))
        ce = student_cross_entropy(logits, targets, ignore_index=self.ignore_index)
        loss = LossOutput(total=ce, parts={"student": ce}, weights={"student": 1.0})
        return DistillerOutput(StudentOutput(logits), loss, None)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def gradient_ratio(self, inputs: Tensor, targets: Tensor, **_: Any) -> float | None:
        """Cross-entropy compared with itself: nothing to compare."""
        return None
