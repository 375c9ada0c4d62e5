"""The ``Objective`` contract: what the trainer trains, whatever the method.

An objective maps a batch to the student's output and a :class:`~kdistill.LossOutput` (with the
teacher's output when there is a teacher), and says which parameters train and which state
beyond the student's weights a checkpoint must keep. :class:`~kdistill.Supervised` and
:class:`~kdistill.Distiller` implement it; a new distillation method implements it too, and
the trainer, checkpoints and data-parallel training work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from kdistill.types import DistillerOutput


@runtime_checkable
class Objective(Protocol):
    """The trainer's view of a training objective.

    Attributes:
        student: the network being trained. The trainer may replace it (compression changes
            its structure; data-parallel training wraps it in ``DistributedDataParallel``).
    """

    student: nn.Module

    def __call__(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        """Forward passes and the loss for one batch."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (what the optimizer steps)."""
        ...

    def train(self, mode: bool = True) -> Any: ...

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to run (0-based): objectives with a schedule act on it."""
        ...

    def extra_state(self) -> dict[str, Any]:
        """Trainable state beyond the student's weights, for checkpoints (tensors and plain
        values): e.g. a jointly trained teacher's weights."""
        ...

    def load_extra_state(self, state: Mapping[str, Any]) -> None: ...

    def gradient_ratio(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> float | None:
        """How hard the loss pulls on the student's logits compared with plain cross-entropy
        on this batch (``None`` when the comparison does not apply)."""
        ...
