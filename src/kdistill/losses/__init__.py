"""Distillation losses: pure functions in :mod:`.functional`, the module in :mod:`.distillation`,
and the one ensemble merge in :mod:`.ensemble`."""

from kdistill.losses import functional
from kdistill.losses.distillation import DistillationLoss
from kdistill.losses.ensemble import merge_members, merged_probabilities

__all__ = ["DistillationLoss", "functional", "merge_members", "merged_probabilities"]
