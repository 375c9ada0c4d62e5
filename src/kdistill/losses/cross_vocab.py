"""Divergences between a teacher's and a student's next-token distributions over **different
vocabularies**, at positions where the two tokenizations are aligned (both predict the text that
starts at the same byte: :mod:`kdistill.data.alignment`). Rows are those aligned positions; each
function returns the per-row value (summed over the vocabulary, no ``T**2``, no averaging), in
float32 or wider.

* **Spans** (in the spirit of GOLD and DSKD): the teacher's probability of each of its tokens is
  given to the student token that spells the longest beginning of the same bytes (a fixed map,
  :meth:`~kdistill.data.alignment.ByteAligner.vocabulary_map`); the result is a distribution over
  the student's vocabulary (renormalized over the mass the map keeps), compared with the
  student's by any token divergence (:func:`~kdistill.losses.tokens.divergence_per_token`).
* **ULD** (Boizard et al. 2024, universal logit distillation): both distributions sorted in
  decreasing order, the shorter padded with zeros to the longer vocabulary, and their L1
  distance (the closed form of the Wasserstein-1 distance between the two sorted vectors): it
  needs no correspondence between the vocabularies at all.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.tokens import _wide, divergence_per_token


def mapped_teacher_logprobs(
    teacher_logits: Tensor, vocabulary_map: Tensor, student_vocab: int, temperature: float
) -> Tensor:
    """``(rows, student_vocab)`` log-probabilities: the teacher's distribution at T moved onto
    the student's vocabulary by ``vocabulary_map`` (``(teacher_vocab,)``, -1: left out) and
    renormalized. A student token no teacher token maps to gets probability 0 (``-inf``)."""
    if vocabulary_map.shape != teacher_logits.shape[-1:]:
        raise ValueError(
            f"vocabulary_map must give one student id per teacher token "
            f"({teacher_logits.shape[-1]}), got shape {tuple(vocabulary_map.shape)}"
        )
    probs = F.softmax(_wide(teacher_logits) / temperature, dim=-1)
    kept = vocabulary_map >= 0
    mass = probs.new_zeros(probs.shape[0], student_vocab)
    mass.index_add_(1, vocabulary_map[kept], probs[:, kept])
    return mass.log() - mass.sum(-1, keepdim=True).log()


def span_divergence_per_token(
    student_logits: Tensor,
    target_logprobs: Tensor,
    *,
    kind: str,
    temperature: float,
    beta: float = 0.5,
    skew: float = 0.1,
) -> Tensor:
    """The ``kind`` divergence of each row between the mapped teacher distribution
    (``target_logprobs``, already at T: :func:`mapped_teacher_logprobs`) and the student's at
    T."""
    return divergence_per_token(
        _wide(student_logits) / temperature, target_logprobs, kind=kind, temperature=1.0,
        beta=beta, skew=skew,
    )  # fmt: skip


def sorted_probs(logits: Tensor, temperature: float) -> Tensor:
    """Each row's probabilities at T in decreasing order."""
    return F.softmax(_wide(logits) / temperature, dim=-1).sort(dim=-1, descending=True).values


def uld_per_token(student_logits: Tensor, teacher_sorted: Tensor, temperature: float) -> Tensor:
    """ULD of each row: ``sum_i |sort(p_s)_i - sort(p_t)_i|`` with the shorter sorted vector
    padded with zeros (``teacher_sorted``: :func:`sorted_probs` of the teacher's logits)."""
    student = sorted_probs(student_logits, temperature)
    teacher = teacher_sorted.to(student.dtype)
    width = max(student.shape[-1], teacher.shape[-1])
    student = F.pad(student, (0, width - student.shape[-1]))
    teacher = F.pad(teacher, (0, width - teacher.shape[-1]))
    return (student - teacher).abs().sum(-1)
