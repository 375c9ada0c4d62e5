"""Distillation losses: pure functions in :mod:`.functional`, the module in :mod:`.distillation`,
the one ensemble merge in :mod:`.ensemble`, and language models' token-level divergences in
:mod:`.tokens`."""

from kdistill.losses import functional
from kdistill.losses.distillation import DistillationLoss
from kdistill.losses.ensemble import merge_members, merged_probabilities
from kdistill.losses.tokens import (
    chunked_head_loss,
    fused_token_divergence,
    sparse_token_divergence,
    teacher_topk,
    token_divergence,
)

__all__ = [
    "DistillationLoss",
    "chunked_head_loss",
    "functional",
    "fused_token_divergence",
    "merge_members",
    "merged_probabilities",
    "sparse_token_divergence",
    "teacher_topk",
    "token_divergence",
]
