"""Teachers: frozen single models, ensembles, and (later) cached outputs. They compose."""

from kdistill.teachers.ensemble import EnsembleTeacher
from kdistill.teachers.frozen import FrozenTeacher, Renormalize, Resize, as_teacher, logits_of
from kdistill.teachers.protocol import Teacher

__all__ = [
    "EnsembleTeacher",
    "FrozenTeacher",
    "Renormalize",
    "Resize",
    "Teacher",
    "as_teacher",
    "logits_of",
]
