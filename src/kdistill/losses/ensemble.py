"""How the outputs of several teachers become one soft target: the one ensemble merge.

Used by :class:`kdistill.EnsembleTeacher` (live members), the cached teacher (members stored
in the teacher-output cache) and the cache build (top-k caches store the merged target).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kdistill.types import TeacherOutput
from kdistill.validation import ENSEMBLE_REDUCES, check_choice, merge_temperature


def merge_members(
    logits: Tensor,
    weights: Sequence[float],
    reduce: str,
    temperature: float | None,
) -> TeacherOutput:
    """Members' logits ``(B, M, C)`` -> one :class:`TeacherOutput`.

    Args:
        logits: every member's logits for the batch, stacked on dimension 1.
        weights: one weight per member, already normalized to sum to 1
            (:func:`kdistill.validation.normalized_weights`).
        reduce: ``"probs"``: the soft target is the mixture ``sum_i w_i softmax(z_i / T)``,
            returned as probabilities at ``temperature``; ``"logits"``: ``sum_i w_i z_i``,
            returned as logits (the loss applies its own T).
        temperature: the distillation temperature (needed for ``"probs"``).
    """
    check_choice("reduce", reduce, ENSEMBLE_REDUCES)
    m = logits.shape[1]
    if len(weights) != m:
        raise ValueError(f"{len(weights)} ensemble weights for {m} members")
    # at least float32 (half-precision members), float64 stays float64
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    w = torch.tensor(list(weights), dtype=z.dtype, device=z.device).view(1, -1, 1)
    if reduce == "logits":
        return TeacherOutput(logits=(z * w).sum(dim=1))
    temperature = merge_temperature(reduce, temperature, "merge_members")
    assert temperature is not None
    probs = (torch.softmax(z / temperature, dim=-1) * w).sum(dim=1)
    return TeacherOutput(probs=probs, temperature=temperature)


def merged_probabilities(
    logits: Tensor, weights: Sequence[float], reduce: str, temperature: float
) -> Tensor:
    """The merged soft target as probabilities at ``temperature`` ``(B, C)`` (top-k caches)."""
    out = merge_members(logits, weights, reduce, temperature)
    if out.probs is not None:
        return out.probs
    return torch.softmax(out.scores.float() / temperature, dim=-1)
