"""``DistillationLoss``: the module form of :func:`kdistill.losses.functional.distillation_loss`.

The module only holds hyper-parameters (validated once, at construction); the math lives in
:mod:`kdistill.losses.functional`.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.losses import functional as KF
from kdistill.types import LossOutput, TeacherOutput
from kdistill.validation import check_temperature, resolve_weights


class DistillationLoss(nn.Module):
    """``alpha * CE(y, softmax(z_s)) + beta * T**2 * KL(softmax(z_t/T) || softmax(z_s/T))``.

    The three ways to weigh the terms are all expressible:

    * Hinton's weighted average: ``DistillationLoss(T, alpha=0.1)`` (``beta = 1 - alpha``);
    * student loss at full weight and a tuned distillation weight: ``alpha=1, beta=0.5``;
    * free weights: any ``alpha, beta >= 0``, not both 0.

    Args:
        temperature: T > 0 applied to both teacher and student in the distillation term.
        alpha: weight of the student loss (cross-entropy against hard labels at T=1).
        beta: weight of the distillation loss; ``None`` means ``1 - alpha``.
        scale_by_t2: multiply the distillation term by ``T**2`` so its gradient scale does not
            change with T (Hinton et al. 2015, section 2). Default ``True``.
        ignore_index: label of unlabelled samples (masks the hard-label terms only).
        teacher_weight: weight of the teacher's own hard-label loss when the teacher is trained
            jointly (Distiller's ``--kd-tw``); 0 keeps the teacher frozen.
        validate: also check the values on every call (labels in range, NaN/Inf, probability
            sums). Each such check synchronizes with the device; kdistill's trainer turns them
            off and checks the total loss once per step instead. Temperature and weights are
            checked once, here; shapes on every call (free).

    Call as ``loss_fn(student_logits, teacher, targets)`` where ``teacher`` is a tensor of
    teacher logits or a :class:`kdistill.TeacherOutput` (logits, or probabilities at this
    temperature). Returns a :class:`kdistill.LossOutput`.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.1,
        beta: float | None = None,
        *,
        scale_by_t2: bool = True,
        ignore_index: int = -100,
        teacher_weight: float = 0.0,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha, self.beta, self.teacher_weight = resolve_weights(alpha, beta, teacher_weight)
        self.scale_by_t2 = bool(scale_by_t2)
        self.ignore_index = int(ignore_index)
        self.validate = bool(validate)

    def forward(
        self,
        student_logits: Tensor,
        teacher: Tensor | TeacherOutput,
        targets: Tensor | None,
    ) -> LossOutput:
        return KF.distillation_loss(
            student_logits,
            teacher,
            targets,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            scale_by_t2=self.scale_by_t2,
            ignore_index=self.ignore_index,
            teacher_weight=self.teacher_weight,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
            f"scale_by_t2={self.scale_by_t2}, teacher_weight={self.teacher_weight}"
        )
