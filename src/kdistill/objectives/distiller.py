"""``Distiller``: student + teacher + loss in one module that drops into any training loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from kdistill.losses.distillation import DistillationLoss
from kdistill.losses.functional import gradient_norms, student_cross_entropy
from kdistill.objectives.base import StudentObjective
from kdistill.teachers.frozen import as_teacher
from kdistill.types import DistillerOutput, LossOutput, StudentOutput, TeacherOutput, logits_of
from kdistill.validation import EpochWindow


class Distiller(StudentObjective):
    """Runs teacher and student on a batch and returns the student's output and the loss.

    Args:
        student: the network being trained; returns logits (or a tuple / dict holding them).
        teacher: a trained network (frozen automatically with :class:`FrozenTeacher`) or a
            teacher object (:class:`FrozenTeacher`, :class:`EnsembleTeacher`, a cached teacher).
            When ``loss.teacher_weight > 0`` (joint training, Distiller's ``--kd-tw``) it must be
            the plain network, which then trains on its own hard-label loss too.
        loss: the :class:`DistillationLoss` (temperature and weights).
        kd_start_epoch: before this epoch (see :meth:`set_epoch`) the teacher is not run and the
            loss is the student's plain cross-entropy, as with Distiller's ``--kd-start-epoch``.
        kd_end_epoch: from this epoch on the loss is plain cross-entropy again (``None``: never).

    ``parameters()`` yields the trainable parameters only (the student's, plus the teacher's in
    joint mode), so ``torch.optim.SGD(distiller.parameters(), ...)`` is right. ``state_dict()``
    is the student's alone, with the student's own keys, so it loads into a bare student.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: DistillationLoss,
        *,
        kd_start_epoch: int = 0,
        kd_end_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise ValueError(f"student must be an nn.Module, got {type(student).__name__}")
        if not isinstance(loss, DistillationLoss):
            raise ValueError(f"loss must be a DistillationLoss, got {type(loss).__name__}")
        try:
            self.window = EpochWindow(kd_start_epoch, kd_end_epoch)
        except ValueError as e:
            raise ValueError(f"kd_start_epoch / kd_end_epoch: {e}") from None
        self.joint = loss.teacher_weight > 0
        if self.joint:
            if getattr(teacher, "is_teacher", False) or not isinstance(teacher, nn.Module):
                raise ValueError(
                    f"teacher_weight={loss.teacher_weight} trains the teacher jointly, so pass the "
                    f"teacher network itself, not a {type(teacher).__name__}"
                )
            self.teacher = teacher
        else:
            self.teacher = as_teacher(teacher)
        self.student = student
        self.loss_fn = loss
        self.epoch = 0

    def _teacher_output(
        self, inputs: Tensor, sample_ids: Tensor | None, views: Tensor | None
    ) -> TeacherOutput:
        if self.joint:
            return TeacherOutput(logits=logits_of(self.teacher(inputs)))
        return self.teacher(inputs, sample_ids=sample_ids, views=views)

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        """Student and teacher forward passes and the loss for one batch.

        Args:
            inputs: the batch as the student sees it.
            targets: ``(N,)`` hard labels (``None`` only for a pure soft-target loss).
            sample_ids, views: dataset indices and augmentation views, for cached teachers.
        """
        student_logits = logits_of(self.student(inputs))
        if not self.kd_active:
            if targets is None:
                raise ValueError(
                    f"epoch {self.epoch} is outside the distillation epochs: the loss is plain "
                    "cross-entropy and needs targets"
                )
            ce = student_cross_entropy(
                student_logits, targets, ignore_index=self.loss_fn.ignore_index
            )
            loss = LossOutput(total=ce, parts={"student": ce}, weights={"student": 1.0})
            return DistillerOutput(StudentOutput(student_logits), loss, None)
        teacher_out = self._teacher_output(inputs, sample_ids, views)
        loss = self.loss_fn(student_logits, teacher_out, targets)
        if self.joint:  # the only teacher whose outputs carry autograd history
            teacher_out = teacher_out.detach()
        return DistillerOutput(StudentOutput(student_logits), loss, teacher_out)

    def gradient_ratio(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> float | None:
        """The norm of the loss's gradient with respect to the student's logits over that of
        plain cross-entropy, on this batch: how much harder distillation pulls than the
        labels alone (a learning rate tuned without a teacher assumes about 1).

        The student runs in eval mode without gradients (nothing in it changes and no random
        number is drawn). ``None`` in joint training or when cross-entropy has no gradient.
        """
        if self.joint:
            return None
        logits = self.probe_logits(inputs)
        loss = self.loss_fn(logits, self._teacher_output(inputs, sample_ids, views), targets)
        norms = gradient_norms({"total": loss.total, "labels": loss.parts["student"]}, logits)
        return None if norms["labels"] <= 0.0 else norms["total"] / norms["labels"]

    # -- what is trained and saved ----------------------------------------------------------

    def trained_besides_student(self) -> dict[str, nn.Module]:
        """The teacher in joint mode (Distiller's ``--kd-tw``)."""
        return {"teacher": self.teacher} if self.joint else {}

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the student: the teacher's weights in joint mode."""
        return {"teacher": self.teacher.state_dict()} if self.joint else {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if self.joint:
            self.teacher.load_state_dict(state["teacher"])
