"""``TokenDistiller``: token-level distillation of a causal language model (the ``Objective``
contract, so the trainer, checkpoints, accumulation and data-parallel training are the image
path's).

A batch is token ids ``(B, T)`` and labels ``(B, T)`` aligned with them (position t predicts
label t; ``-100`` takes no loss). The loss is ``alpha * CE + beta * D``: the labels'
cross-entropy and a token divergence (:mod:`kdistill.losses.tokens`: forward or reverse KL,
GKD's JSD, DistiLLM's skewed KLs, TVD; against a cached teacher's top-k tokens, the forward KL
over its buckets), both averaged over the kept tokens of the batch, ``D`` at temperature T and
multiplied by ``T**2``. A student with an output head over its last hidden states (kdistill's
GPTs) whose logits would not fit in one chunk never builds its full ``(tokens, vocab)``
logits: both losses and their gradients are computed chunk by chunk along the kept tokens
(:func:`token_step`). The ``LossOutput`` carries the number of kept tokens as its ``count``, so
the trainer weighs micro-batches and processes by their tokens: a step follows the mean over
every kept token of the global batch however it is split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses.tokens import (
    DIVERGENCES,
    checked_topk_ids,
    chunked_head_loss,
    default_chunk_size,
    divergence_per_token,
    sparse_divergence_per_token,
    sparse_kl_and_cross_entropy,
)
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
        chunk_size: tokens per chunk of the chunked loss (:func:`token_step`); ``None``: about
            32 MiB of logits per chunk.
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
        chunk_size: int | None = None,
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
        self.chunk_size = chunk_size

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        _check_batch(inputs, targets)
        t2 = self.temperature**2
        distilling = self.kd_active and self.beta > 0
        kept = int((targets != IGNORE_INDEX).sum())
        if (
            distilling
            and getattr(self.teacher, "gives_last_hidden", False)
            and chunked_head(self.student, kept, self.chunk_size) is not None
        ):
            # the student's loss goes chunk by chunk: so do the teacher's logits, from its last
            # hidden states (neither model's (tokens, vocab) logits are ever whole)
            teacher = self.teacher.last_hidden(inputs)
        else:
            teacher = self.teacher(inputs, sample_ids=sample_ids, views=views)
        predicted = (
            torch.full((kept,), IGNORE_INDEX, dtype=torch.long, device=targets.device)
            if teacher.last_hidden is not None
            else None
        )

        def divergence(vocab: int, keep: Tensor) -> RowLoss:
            return self._divergence_rows(teacher, keep, vocab, predicted)

        step = token_step(
            self.student, inputs, targets, self.alpha,
            divergence if distilling else None, self.beta * t2, self.chunk_size,
        )  # fmt: skip
        if predicted is not None:  # the teacher's tokens, kept while its logits were computed
            every = torch.full_like(targets, IGNORE_INDEX)
            every[targets != IGNORE_INDEX] = predicted
            teacher = replace(teacher, predicted=every)
        return self.output(step, distilling, teacher)

    def output(
        self, step: TokenStep, distilling: bool, teacher: TeacherOutput | None
    ) -> DistillerOutput:
        """The batch's output: its loss with the student's and the divergence's parts."""
        # a batch whose tokens are all prompt (possible for one process or micro-batch) adds
        # nothing: its count is 0, and so is its loss
        beta = self.beta if distilling and bool(step.count > 0) else 0.0
        loss = LossOutput(
            total=step.total,
            parts={"student": step.cross_entropy, "distill": step.extra},
            weights={"student": self.alpha, "distill": beta * self.temperature**2},
            count=step.count,
        )
        return DistillerOutput(step.output, loss, teacher)

    def _divergence_rows(
        self, teacher: TeacherOutput, keep: Tensor, vocab: int, predicted: Tensor | None = None
    ) -> RowLoss:
        """The teacher's kept rows, as the summed divergence of the student's logits of rows
        ``at`` of the kept tokens against them (no ``T**2``). A teacher given as its last
        hidden states has its logits computed a chunk of rows at a time, and their argmax
        written into ``predicted``."""
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
            k = teacher.topk_ids.shape[-1]
            return SparseRows(
                checked_topk_ids(teacher.topk_ids.reshape(-1, k)[keep], vocab),
                teacher.topk_logprobs.reshape(-1, k)[keep],
                self.temperature,
            )
        if teacher.last_hidden is not None:
            assert teacher.head_weight is not None
            t_hidden = teacher.last_hidden.reshape(-1, teacher.last_hidden.shape[-1])[keep]
            t_head = teacher.head_weight

            def teacher_rows(at: slice) -> Tensor:
                with torch.no_grad():
                    chunk = t_hidden[at] @ t_head.T
                if predicted is not None:
                    predicted[at] = chunk.argmax(dim=-1)
                return chunk

        elif teacher.logits is not None:
            t_logits = teacher.logits.reshape(-1, teacher.logits.shape[-1])[keep].detach()

            def teacher_rows(at: slice) -> Tensor:
                return t_logits[at]

        else:
            raise ValueError("a language-model teacher must give logits or its top-k tokens")

        def rows(logits: Tensor, at: slice) -> Tensor:
            chunk = teacher_rows(at)
            if chunk.shape[-1] != vocab:
                chunk = align_vocabulary(chunk, vocab)
            return divergence_per_token(
                logits, chunk, kind=self.kind, temperature=self.temperature,
                beta=self.jsd_beta, skew=self.skew,
            ).sum()  # fmt: skip

        return rows

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def gradient_ratio(self, inputs: Tensor, targets: Tensor, **_: Any) -> float | None:
        """Not compared: a language model's loss is already a mean over many tokens."""
        return None


RowLoss = Callable[[Tensor, slice], Tensor]
"""``(logits, at) -> summed loss`` of the student's logits of rows ``at`` of the kept tokens."""


@dataclass(frozen=True)
class SparseRows:
    """A cached teacher's kept rows (top-k ids and log-probabilities at ``temperature``): the
    forward KL over its buckets of the student's logits of rows ``at``; with the labels, the
    chunked path takes both losses' gradient in closed form
    (:func:`~kdistill.losses.tokens.sparse_kl_and_cross_entropy`)."""

    ids: Tensor
    logprobs: Tensor
    temperature: float

    def __call__(self, logits: Tensor, at: slice) -> Tensor:
        return sparse_divergence_per_token(
            logits, self.ids[at], self.logprobs[at], temperature=self.temperature
        ).sum()

    def with_labels(
        self, logits: Tensor, labels: Tensor, at: slice, ce_weight: float, kl_weight: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        return sparse_kl_and_cross_entropy(
            logits, labels, self.ids[at], self.logprobs[at], temperature=self.temperature,
            ce_weight=ce_weight, kl_weight=kl_weight,
        )  # fmt: skip


@dataclass(frozen=True)
class TokenStep:
    """One batch of a language model: ``total = (alpha * CE_sum + w * extra_sum) / count``, the
    unweighted means of its parts, the kept tokens' ``count`` and what the student produced."""

    total: Tensor
    cross_entropy: Tensor
    extra: Tensor
    count: Tensor
    output: StudentOutput


def token_step(
    student: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    alpha: float,
    extra: Callable[[int, Tensor], RowLoss] | None = None,
    extra_weight: float = 0.0,
    chunk_size: int | None = None,
) -> TokenStep:
    """The labels' cross-entropy (weight ``alpha``) plus ``extra(vocab, keep)``'s loss (weight
    ``extra_weight``), averaged over the kept tokens (0 when there are none, where a plain mean
    would be NaN).

    A student with an output head over its last hidden states (:func:`output_head`) whose
    logits would take more than one chunk (``chunk_size`` kept tokens; by default about 32 MiB of
    float32 logits) never builds its full logits: the head, both losses and their gradients run
    chunk by chunk along the kept tokens (:func:`~kdistill.losses.tokens.chunked_head_loss`),
    and the output carries the predicted tokens instead of logits. Any other student's logits
    are computed whole.
    """
    keep = (targets != IGNORE_INDEX).reshape(-1)
    count = keep.sum()
    labels = targets.reshape(-1)[keep]
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums[name] + value.detach() if name in sums else value.detach()

    head = chunked_head(student, int(count), chunk_size)
    if head is None:
        logits = logits_of(student(inputs))
        vocab = logits.shape[-1]
        rows = logits.reshape(-1, vocab)[keep]
        loss = alpha * _cross_entropy_sum(rows, labels, add)
        if extra is not None:
            loss = loss + extra_weight * _extra_sum(extra(vocab, keep), rows, slice(None), add)
        total = loss / count.clamp(min=1)
        output = StudentOutput(logits)
    else:
        hidden = student(inputs, last_hidden=True)
        vocab = head.weight.shape[0]
        kept_predictions = torch.empty_like(labels)
        rows_loss = extra(vocab, keep) if extra is not None else None

        def chunk_loss(logits: Tensor, at: slice) -> Tensor | tuple[Tensor, Tensor]:
            kept_predictions[at] = logits.detach().argmax(dim=-1)
            if isinstance(rows_loss, SparseRows):
                ce, kl, grad = rows_loss.with_labels(logits, labels[at], at, alpha, extra_weight)
                add("ce", ce)
                add("extra", kl)
                return alpha * ce + extra_weight * kl, grad
            loss = alpha * _cross_entropy_sum(logits, labels[at], add)
            if rows_loss is not None:
                loss = loss + extra_weight * _extra_sum(rows_loss, logits, at, add)
            return loss

        total = chunked_head_loss(
            hidden.reshape(-1, hidden.shape[-1])[keep], head.weight, chunk_loss,
            scale=1.0 / max(1, int(count)), chunk_size=chunk_size,
        )  # fmt: skip
        predictions = torch.full_like(targets.reshape(-1), IGNORE_INDEX)
        predictions[keep] = kept_predictions
        output = StudentOutput(None, predictions=predictions.view_as(targets))
    zero = total.new_zeros((), dtype=torch.float32).detach()
    per_token = 1.0 / count.clamp(min=1)
    return TokenStep(
        total=total,
        cross_entropy=sums.get("ce", zero) * per_token,
        extra=sums.get("extra", zero) * per_token,
        count=count,
        output=output,
    )


def chunked_head(student: nn.Module, kept: int, chunk_size: int | None) -> nn.Linear | None:
    """The student's output head if its loss over ``kept`` tokens goes chunk by chunk: it has
    one (:func:`output_head`) and the logits take more than one chunk (logits that fit in one
    are computed whole: chunking would only add its cost)."""
    head = output_head(student)
    if head is None:
        return None
    per_chunk = chunk_size if chunk_size is not None else default_chunk_size(head.out_features)
    return head if kept > per_chunk else None


def output_head(model: nn.Module) -> nn.Linear | None:
    """The model's bias-free output head if it gives its last hidden states, else ``None``
    (then only its logits can be used).

    The interface: ``model(ids, last_hidden=True)`` returns the hidden states the head reads
    (through ``forward``, so that a data-parallel wrapper still sees the call), ``model.head``
    is a bias-free ``nn.Linear``, and ``gives_last_hidden = True`` says that the logits are
    exactly the head applied to those states (kdistill's GPTs; ``hf:`` models where a probe at
    load finds it so: a Hugging Face model may scale or cap its logits). Checked here by duck
    typing: the objectives do not import the models.
    """
    inner = model
    while isinstance(getattr(inner, "module", None), nn.Module):  # a data-parallel wrapper
        inner = inner.module
    head = getattr(inner, "head", None)
    # exactly a Linear: a subclass may compute with other weights than .weight (torchao's
    # fake-quantized Linear rounds them in its forward), which a chunked loss would bypass
    if not getattr(inner, "gives_last_hidden", False) or type(head) is not nn.Linear:
        return None
    if _sharded(inner):  # FSDP2 gathers the head's weight only inside the model's forward
        return None
    return head if head.bias is None else None


def _sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _cross_entropy_sum(
    logits: Tensor, labels: Tensor, add: Callable[[str, Tensor], None]
) -> Tensor:
    ce = F.cross_entropy(logits.float(), labels, reduction="sum")
    add("ce", ce)
    return ce


def _extra_sum(
    rows: RowLoss, logits: Tensor, at: slice, add: Callable[[str, Tensor], None]
) -> Tensor:
    value = rows(logits, at)
    add("extra", value)
    return value


def _check_batch(inputs: Tensor, targets: Tensor) -> None:
    if inputs.dim() != 2 or targets.shape != inputs.shape:
        raise ValueError(
            f"a language model's batch is token ids (batch, seq) with labels of the same "
            f"shape, got inputs {tuple(inputs.shape)} and labels {tuple(targets.shape)}"
        )


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
    trained): cross-entropy averaged over the kept tokens, with their count, computed as
    :class:`TokenDistiller` computes it (chunk by chunk when the student has an output head)."""

    def __init__(self, student: nn.Module, *, chunk_size: int | None = None) -> None:
        super().__init__(student, ignore_index=IGNORE_INDEX)
        self.chunk_size = chunk_size  # tokens per chunk of the chunked loss; None: ~32 MiB

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        _check_batch(inputs, targets)
        step = token_step(self.student, inputs, targets, 1.0, chunk_size=self.chunk_size)
        loss = LossOutput(
            total=step.total, parts={"student": step.cross_entropy}, weights={"student": 1.0},
            count=step.count,
        )  # fmt: skip
        return DistillerOutput(step.output, loss, None)
