"""Objectives: a batch in, the student's output and a ``LossOutput`` out."""

from kdistill.objectives.distiller import Distiller
from kdistill.objectives.supervised import Supervised

__all__ = ["Distiller", "Supervised"]
