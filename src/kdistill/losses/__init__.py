"""Distillation losses: pure functions in :mod:`.functional`, the module in :mod:`.distillation`."""

from kdistill.losses import functional
from kdistill.losses.distillation import DistillationLoss

__all__ = ["DistillationLoss", "functional"]
