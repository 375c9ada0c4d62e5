"""``CrossTokenizerDistiller``: a causal LM student with its own vocabulary taught by a teacher
with another (its own tokenizer), on packed text.

Each student block is spelled back into text and tokenized by the teacher's tokenizer
(:class:`~kdistill.data.alignment.ByteAligner`); the teacher reads its own tokens, and at every
position where the two tokenizations end at the same byte the student's next-token distribution
is compared with the teacher's (:mod:`kdistill.losses.cross_vocab`): ``spans`` moves the
teacher's probabilities onto the student's vocabulary by the bytes its tokens spell, then any
token divergence (``kind``); ``uld`` compares the two sorted distributions. The loss is
``alpha * CE + beta * T**2 * D``: CE over every kept token, D summed over the aligned ones and
divided by the kept tokens too (a position without a counterpart contributes no divergence), so
the ``LossOutput.count`` (the kept tokens) weighs micro-batches and processes exactly as the
token distiller's; the chunked loss of a student with an output head is the same
(:func:`~kdistill.objectives.tokens.token_step`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdistill.data.alignment import ByteAligner
from kdistill.losses.cross_vocab import (
    mapped_teacher_logprobs,
    sorted_probs,
    span_divergence_per_token,
    uld_per_token,
)
from kdistill.losses.tokens import DIVERGENCES
from kdistill.objectives.tokens import RowLoss, TokenDistiller, _check_batch, token_step
from kdistill.types import IGNORE_INDEX, DistillerOutput
from kdistill.validation import CROSS_TOKENIZER_METHODS


class CrossTokenizerDistiller(TokenDistiller):
    """A student taught by a teacher of another tokenizer, at aligned positions.

    Args:
        student: the language model being trained, over the student tokenizer's ids.
        teacher: the teacher network (frozen here) or frozen teacher object, over its own ids.
        aligner: the two tokenizers' byte alignment.
        method: ``spans`` or ``uld``.
        context: the most tokens the teacher reads (``None``: no limit).
        settings: :class:`~kdistill.objectives.tokens.TokenDistiller`'s (``kind``,
            ``temperature``, ``alpha``, ``beta``, ``jsd_beta``, ``skew``, the epoch window,
            ``chunk_size``); ``kind`` is ``spans``' divergence (not ``reverse_kl``: the mapped
            distribution is zero on student tokens no teacher token starts with, where it would
            be infinite).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        aligner: ByteAligner,
        *,
        method: str = "spans",
        context: int | None = None,
        **settings: Any,
    ) -> None:
        if method not in CROSS_TOKENIZER_METHODS:
            raise ValueError(
                f"method must be one of {', '.join(CROSS_TOKENIZER_METHODS)}, got {method!r}"
            )
        if method == "spans" and settings.get("kind") == "reverse_kl":
            valid = [k for k in DIVERGENCES if k != "reverse_kl"]
            raise ValueError(
                f"the spans method takes kind {', '.join(valid)}, got 'reverse_kl' (the "
                "teacher's mapped distribution is zero on some student tokens: its reverse KL is "
                "infinite)"
            )
        super().__init__(student, teacher, **settings)
        self.aligner = aligner
        self.method = method
        self.context = context
        vocabulary_map = torch.from_numpy(aligner.vocabulary_map()) if method == "spans" else None
        self.register_buffer("vocabulary_map", vocabulary_map, persistent=False)

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
        divergence = None
        if distilling:
            row_of_kept, teacher_rows = self.teacher_targets(inputs, targets)

            def divergence(vocab: int, keep: Tensor) -> RowLoss:
                return self._rows(row_of_kept, teacher_rows, vocab)

        step = token_step(
            self.student, inputs, targets, self.alpha, divergence, self.beta * t2,
            self.chunk_size,
        )  # fmt: skip
        return self.output(step, distilling, None)

    def teacher_targets(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(kept tokens,)`` the row of the teacher's targets each kept student token is
        compared with (-1: no aligned teacher position), and those rows: the mapped
        log-probabilities over the student's vocabulary (spans) or the sorted probabilities
        (uld), at T."""
        device = inputs.device
        batch, length = inputs.shape
        views = [self.aligner.view(row) for row in inputs.tolist()]
        longest = max(len(v.ids) for v in views)
        if self.context is not None and longest > self.context:
            raise ValueError(
                f"the teacher's tokens of a block number {longest}, more than the {self.context} "
                "it reads: lower data.block"
            )
        ids = torch.full((batch, max(1, longest)), self.aligner.teacher_eos, dtype=torch.long)
        for b, v in enumerate(views):
            ids[b, : len(v.ids)] = torch.tensor(v.ids, dtype=torch.long)
        rows_b = torch.tensor([b for b, v in enumerate(views) for _ in v.teacher], dtype=torch.long)
        rows_t = torch.tensor([j for v in views for j in v.teacher], dtype=torch.long)
        student_flat = torch.tensor(
            [b * length + i for b, v in enumerate(views) for i in v.student], dtype=torch.long
        )
        keep = (targets != IGNORE_INDEX).reshape(-1).cpu()
        kept_index = keep.long().cumsum(0) - 1
        useful = keep[student_flat] if len(student_flat) else torch.zeros(0, dtype=torch.bool)
        rows_b, rows_t, student_flat = rows_b[useful], rows_t[useful], student_flat[useful]
        row_of_kept = torch.full((int(keep.sum()),), -1, dtype=torch.long)
        row_of_kept[kept_index[student_flat]] = torch.arange(len(student_flat))
        logits = self._teacher_logits(ids.to(device), rows_b.to(device), rows_t.to(device))
        with torch.no_grad():
            if self.method == "spans":
                assert self.vocabulary_map is not None
                target = mapped_teacher_logprobs(
                    logits, self.vocabulary_map, self._student_vocab(), self.temperature
                )
            else:
                target = sorted_probs(logits, self.temperature)
        return row_of_kept.to(device), target

    def _teacher_logits(self, ids: Tensor, rows_b: Tensor, rows_t: Tensor) -> Tensor:
        """The teacher's logits at the aligned positions only: from its last hidden states
        when it gives them (the full ``(tokens, vocab)`` logits are never made)."""
        with torch.no_grad():
            if getattr(self.teacher, "gives_last_hidden", False):
                out = self.teacher.last_hidden(ids)
                assert out.last_hidden is not None and out.head_weight is not None
                return out.last_hidden[rows_b, rows_t] @ out.head_weight.T
            out = self.teacher(ids)
            if out.logits is None:
                raise ValueError("a cross-tokenizer teacher must give logits (run it online)")
            return out.logits[rows_b, rows_t].float()

    def _student_vocab(self) -> int:
        return len(self.aligner.student_bytes)

    def _rows(self, row_of_kept: Tensor, teacher_rows: Tensor, vocab: int) -> RowLoss:
        if self.method == "spans" and teacher_rows.shape[-1] != vocab:
            raise ValueError(
                f"the student's logits cover {vocab:,} ids, its tokenizer {self._student_vocab():,}"
            )

        def rows(logits: Tensor, at: slice) -> Tensor:
            index = row_of_kept[at]
            aligned = index >= 0
            if not bool(aligned.any()):
                return logits.sum() * 0.0
            mine, theirs = logits[aligned], teacher_rows[index[aligned]]
            if self.method == "uld":
                return uld_per_token(mine, theirs, self.temperature).sum()
            return span_divergence_per_token(
                mine, theirs, kind=self.kind, temperature=self.temperature,
                beta=self.jsd_beta, skew=self.skew,
            ).sum()  # fmt: skip

        return rows
