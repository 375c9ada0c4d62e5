"""``Distiller``: Hinton's distillation (student + teacher + :class:`DistillationLoss`) in one
module that drops into any training loop. It is the method objective with Hinton's term (and,
in joint training, the teacher's own label term): one objective, one place for the loss."""

from __future__ import annotations

from torch import nn

from kdistill.losses.distillation import DistillationLoss
from kdistill.objectives.method_distiller import MethodDistiller
from kdistill.objectives.terms import HintonTerm, TeacherLabelsTerm, Term


class Distiller(MethodDistiller):
    """Runs teacher and student on a batch and returns the student's output and the loss
    ``alpha * CE + beta * T^2 * KL (+ teacher_weight * CE of the teacher)``.

    Args:
        student: the network being trained; returns logits (or a tuple / dict holding them).
        teacher: a trained network (frozen automatically with :class:`FrozenTeacher`) or a
            teacher object (:class:`FrozenTeacher`, :class:`EnsembleTeacher`, a cached teacher).
            When ``loss.teacher_weight > 0`` (joint training, Distiller's ``--kd-tw``) it must be
            the plain network, which then trains on its own hard-label loss too.
        loss: the :class:`DistillationLoss` whose temperature and weights the objective uses
            (its terms: the labels' cross-entropy ``"student"``, Hinton's ``"distill"``, the
            teacher's ``"teacher"``).
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
        if not isinstance(student, nn.Module):
            raise ValueError(f"student must be an nn.Module, got {type(student).__name__}")
        if not isinstance(loss, DistillationLoss):
            raise ValueError(f"loss must be a DistillationLoss, got {type(loss).__name__}")
        terms: list[Term] = [HintonTerm(loss.beta, loss.temperature, scale_by_t2=loss.scale_by_t2)]
        if loss.teacher_weight > 0:
            if getattr(teacher, "is_teacher", False) or not isinstance(teacher, nn.Module):
                raise ValueError(
                    f"teacher_weight={loss.teacher_weight} trains the teacher jointly, so pass the "
                    f"teacher network itself, not a {type(teacher).__name__}"
                )
            terms.append(TeacherLabelsTerm(loss.teacher_weight, ignore_index=loss.ignore_index))
        super().__init__(
            student,
            teacher,
            terms,
            label_weight=loss.alpha,
            ignore_index=loss.ignore_index,
            kd_start_epoch=kd_start_epoch,
            kd_end_epoch=kd_end_epoch,
        )
        self.loss_fn = loss  # the hyper-parameters it was built from
