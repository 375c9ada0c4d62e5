"""Objectives: what the trainer optimizes (plain cross-entropy, Hinton's distillation, any
combination of distillation methods, a language model's token-level distillation), one
contract."""

from kdistill.objectives.distiller import Distiller
from kdistill.objectives.method_distiller import MethodDistiller
from kdistill.objectives.protocol import Objective
from kdistill.objectives.supervised import Supervised
from kdistill.objectives.terms import Term, TermInputs, build_term
from kdistill.objectives.tokens import NextTokenLoss, TokenDistiller

__all__ = [
    "Distiller",
    "MethodDistiller",
    "NextTokenLoss",
    "Objective",
    "Supervised",
    "Term",
    "TermInputs",
    "TokenDistiller",
    "build_term",
]
