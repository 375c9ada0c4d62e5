"""What every distillation objective shares: the student's weights as the objective's
``state_dict``, the epochs distillation is on, the trainable parameters, and the student's
logits for the gradient check."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.types import logits_of
from kdistill.validation import EpochWindow


class StudentObjective(nn.Module):
    """Base of :class:`~kdistill.Distiller` and :class:`~kdistill.MethodDistiller`.

    Subclasses set ``self.student``, ``self.window`` (an :class:`EpochWindow`) and
    ``self.epoch``, and name in :meth:`trained_besides_student` the modules that train with the
    student (a jointly trained teacher, adapters, embedding heads).
    """

    student: nn.Module
    window: EpochWindow
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Tell the objective which epoch (0-based) is running; it gates the distillation."""
        self.epoch = int(epoch)

    @property
    def kd_active(self) -> bool:
        """Whether distillation is on for the current epoch."""
        return self.window.contains(self.epoch)

    def trained_besides_student(self) -> dict[str, nn.Module]:
        """Modules whose parameters train with the student, by name."""
        return {}

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """Trainable parameters only: the student's and :meth:`trained_besides_student`'s
        (never a frozen teacher's)."""
        dot = f"{prefix}." if prefix else ""
        yield from self.student.named_parameters(f"{dot}student", recurse, remove_duplicate)
        for name, module in self.trained_besides_student().items():
            yield from module.named_parameters(f"{dot}{name}", recurse, remove_duplicate)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The student's ``state_dict`` (same keys as ``student.state_dict()``)."""
        return self.student.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        """Load a student ``state_dict`` into the student."""
        return self.student.load_state_dict(state_dict, strict=strict, assign=assign)

    def probe_logits(self, inputs: Tensor) -> Tensor:
        """The student's logits for ``inputs`` as a leaf that requires grad, computed in eval
        mode without gradients (nothing in the student changes, no random number is drawn):
        what the gradient check differentiates the loss against."""
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            logits = logits_of(self.student(inputs)).detach().float()
        self.student.train(was_training)
        return logits.requires_grad_(True)
