"""Objectives: what the trainer optimizes (plain cross-entropy, distillation), one contract."""

from kdistill.objectives.distiller import Distiller
from kdistill.objectives.protocol import Objective
from kdistill.objectives.supervised import Supervised

__all__ = ["Distiller", "Objective", "Supervised"]
