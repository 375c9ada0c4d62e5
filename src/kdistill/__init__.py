"""kdistill: knowledge distillation for PyTorch.

Importing this package loads PyTorch and kdistill's own modules only: it starts no CUDA
context, reads no data and opens no connection.
"""

from kdistill._version import __version__
from kdistill.losses import DistillationLoss
from kdistill.objectives import Distiller, Supervised
from kdistill.teachers import EnsembleTeacher, FrozenTeacher, Renormalize, Teacher, as_teacher
from kdistill.types import DistillerOutput, LossOutput, StudentOutput, TeacherOutput

__all__ = [
    "DistillationLoss",
    "Distiller",
    "DistillerOutput",
    "EnsembleTeacher",
    "FrozenTeacher",
    "LossOutput",
    "Renormalize",
    "StudentOutput",
    "Supervised",
    "Teacher",
    "TeacherOutput",
    "__version__",
    "as_teacher",
]
