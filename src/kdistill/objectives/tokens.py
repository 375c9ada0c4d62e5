"""``TokenDistiller``: token-level distillation of a causal language model (the ``Objective``
contract, so the trainer, checkpoints, accumulation and data-parallel training are the image
path's).

A batch is token ids ``(B, T)`` and labels ``(B, T)`` aligned with them (position t predicts
label t; ``-100`` takes no loss). The loss is ``alpha * CE + beta * D``: the labels'
cross-entropy and a token divergence (:mod:`kdistill.losses.tokens`: forward or reverse KL,
GKD's JSD, DistiLLM's skewed KLs, TVD; against a cached teacher's top-k tokens, the forward KL
over its buckets), both averaged over the kept tokens of the batch, ``D`` at temperature T and
multiplied by ``T**2``. The ``LossOutput`` carries the number of kept tokens as its ``count``,
so the trainer weighs micro-batches and processes by their tokens: a step follows the mean over
every kept token of the global batch however it is split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses.tokens import DIVERGENCES, sparse_token_divergence, token_divergence
from kdistill.objectives.base import StudentObjective
from kdistill.objectives.supervised import Supervised
from kdistill.teachers import as_teacher
from kdistill.types import (
    IGNORE_INDEX,
    DistillerOutput,
    LossOutput,
    StudentOutput,
    TeacherOutput,
    logits_of,
)
from kdistill.validation import EpochWindow, check_temperature, same_temperature


class TokenDistiller(StudentObjective):
    """A causal LM student taught by a causal LM teacher, token by token.

    Args:
        student: the language model being trained (``ids -> (B, T, V)`` logits).
        teacher: the teacher: a network (frozen here), a frozen teacher object, or a cached
            teacher (:class:`~kdistill.teachers.cached.CachedTeacher` over a token cache: its
            top-k tokens, which only the forward KL reads).
        kind: the divergence (``forward_kl``, ``reverse_kl``, ``jsd``, ``skew_forward_kl``,
            ``skew_reverse_kl``, ``tvd``).
        temperature: T of both distributions; the divergence is multiplied by ``T**2``.
        alpha: weight of the labels' cross-entropy (at T = 1).
        beta: weight of the divergence.
        jsd_beta, skew: the JSD's mixture weight and the skewed KLs' skew.
        kd_start_epoch, kd_end_epoch: the divergence counts in these epochs (0-based, the end
            excluded; ``None``: to the end); outside them the student learns the labels alone.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        kind: str = "forward_kl",
        temperature: float = 1.0,
        alpha: float = 0.5,
        beta: float = 0.5,
        jsd_beta: float = 0.5,
        skew: float = 0.1,
        kd_start_epoch: int = 0,
        kd_end_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in DIVERGENCES:
            raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}, got {kind!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.student = student
        self.teacher = as_teacher(teacher)
        self.kind = kind
        self.temperature = check_temperature(temperature)
        self.alpha, self.beta = float(alpha), float(beta)
        self.jsd_beta, self.skew = float(jsd_beta), float(skew)
        self.window = EpochWindow(kd_start_epoch, kd_end_epoch)
        self.epoch = 0

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        if inputs.dim() != 2 or targets.shape != inputs.shape:
            raise ValueError(
                f"a language model's batch is token ids (batch, seq) with labels of the same "
                f"shape, got inputs {tuple(inputs.shape)} and labels {tuple(targets.shape)}"
            )
        logits = logits_of(self.student(inputs))
        ce, count = next_token_loss(logits, targets)
        t2 = self.temperature**2
        # a batch whose tokens are all prompt (possible for one process or micro-batch) adds
        # nothing: its count is 0, and so is its loss
        distilling = self.kd_active and self.beta > 0 and bool(count > 0)
        teacher = self.teacher(inputs, sample_ids=sample_ids, views=views)
        divergence = (
            self._divergence(logits, teacher, targets)
            if distilling
            else logits.new_zeros((), dtype=torch.float32)
        )
        beta = self.beta if distilling else 0.0
        total = self.alpha * ce + beta * divergence
        loss = LossOutput(
            total=total,
            parts={"student": ce, "distill": divergence.detach() / t2},
            weights={"student": self.alpha, "distill": beta * t2},
            count=count,
        )
        return DistillerOutput(StudentOutput(logits), loss, teacher)

    def _divergence(self, logits: Tensor, teacher: TeacherOutput, targets: Tensor) -> Tensor:
        if teacher.topk_ids is not None:
            if self.kind != "forward_kl":
                raise ValueError(
                    f"a cached teacher's top-k tokens give the forward KL over their buckets; "
                    f"kind={self.kind!r} needs the teacher's full distribution (run it online)"
                )
            assert teacher.temperature is not None and teacher.topk_logprobs is not None
            if not same_temperature(teacher.temperature, self.temperature):
                raise ValueError(
                    f"the cached teacher's log-probabilities are at temperature "
                    f"{teacher.temperature}, the loss is at {self.temperature}"
                )
            return sparse_token_divergence(
                logits, teacher.topk_ids, teacher.topk_logprobs, targets,
                temperature=self.temperature,
            )  # fmt: skip
        if teacher.logits is None:
            raise ValueError("a language-model teacher must give logits or its top-k tokens")
        teacher_logits = teacher.logits
        if teacher_logits.shape[-1] != logits.shape[-1]:
            teacher_logits = align_vocabulary(teacher_logits, logits.shape[-1])
        return token_divergence(
            logits, teacher_logits, targets, kind=self.kind, temperature=self.temperature,
            beta=self.jsd_beta, skew=self.skew,
        )  # fmt: skip

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def gradient_ratio(self, inputs: Tensor, targets: Tensor, **_: Any) -> float | None:
        """Not compared: a language model's loss is already a mean over many tokens."""
        return None


def next_token_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The labels' cross-entropy averaged over the kept tokens (0 when there are none, where a
    plain mean would be NaN), and their count."""
    count = (labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / count.clamp(min=1), count


def align_vocabulary(teacher_logits: Tensor, vocab: int) -> Tensor:
    """Teacher logits over ``vocab`` ids: one tokenizer's vocabulary padded to another size
    (models round their embedding up to a multiple of 64 or 128). Ids beyond the teacher's
    vocabulary get (almost) no probability: a logit far below any real one, finite so that
    every divergence stays finite, and the student is taught not to predict them; ids beyond the
    student's are dropped (no text the shared tokenizer makes holds them)."""
    have = teacher_logits.shape[-1]
    if have > vocab:
        return teacher_logits[..., :vocab]
    pad = teacher_logits.new_full((*teacher_logits.shape[:-1], vocab - have), PADDED_LOGIT)
    return torch.cat([teacher_logits, pad], dim=-1)


PADDED_LOGIT = -1e4


class NextTokenLoss(Supervised):
    """A language model learning its labels alone (the scratch baseline, and a teacher being
    trained): cross-entropy averaged over the kept tokens, with their count (as
    :class:`TokenDistiller`)."""

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        logits = logits_of(self.student(inputs))
        ce, count = next_token_loss(logits, targets)
        loss = LossOutput(total=ce, parts={"student": ce}, weights={"student": 1.0}, count=count)
        return DistillerOutput(StudentOutput(logits), loss, None)
