"""kdistill: knowledge distillation for PyTorch.

The public API is importable from here; each name is loaded on first use, so ``import
kdistill`` imports neither torch nor anything else heavy, starts no CUDA context, reads no data
and opens no connection.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdistill._version import __version__

# name -> the module that defines it
_EXPORTS = {
    "Batch": "kdistill.types",
    "Callback": "kdistill.engine.trainer",
    "CodeTrust": "kdistill.trust",
    "DistillationLoss": "kdistill.losses.distillation",
    "Distiller": "kdistill.objectives.distiller",
    "DistillerOutput": "kdistill.types",
    "EnsembleTeacher": "kdistill.teachers.ensemble",
    "FrozenTeacher": "kdistill.teachers.frozen",
    "Loop": "kdistill.engine.trainer",
    "MethodDistiller": "kdistill.objectives.method_distiller",
    "LossOutput": "kdistill.types",
    "ModelSpec": "kdistill.models.spec",
    "Objective": "kdistill.objectives.protocol",
    "Renormalize": "kdistill.teachers.frozen",
    "RunConfig": "kdistill.config.schema",
    "RunRecord": "kdistill.record",
    "StudentOutput": "kdistill.types",
    "Supervised": "kdistill.objectives.supervised",
    "Teacher": "kdistill.teachers.protocol",
    "TeacherOutput": "kdistill.types",
    "Trainer": "kdistill.engine.trainer",
    "as_teacher": "kdistill.teachers.frozen",
    "build_run": "kdistill.experiment.assembly",
    "load_config": "kdistill.config.loader",
    "load_model": "kdistill.experiment.loading",
    "run": "kdistill.experiment.runner",
}

__all__ = [
    "Batch",
    "Callback",
    "CodeTrust",
    "DistillationLoss",
    "Distiller",
    "DistillerOutput",
    "EnsembleTeacher",
    "FrozenTeacher",
    "Loop",
    "LossOutput",
    "MethodDistiller",
    "ModelSpec",
    "Objective",
    "Renormalize",
    "RunConfig",
    "RunRecord",
    "StudentOutput",
    "Supervised",
    "Teacher",
    "TeacherOutput",
    "Trainer",
    "__version__",
    "as_teacher",
    "build_run",
    "load_config",
    "load_model",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from kdistill.config.loader import load_config
    from kdistill.config.schema import RunConfig
    from kdistill.engine.trainer import Callback, Loop, Trainer
    from kdistill.experiment.assembly import build_run
    from kdistill.experiment.loading import load_model
    from kdistill.experiment.runner import run
    from kdistill.losses.distillation import DistillationLoss
    from kdistill.models.spec import ModelSpec
    from kdistill.objectives.distiller import Distiller
    from kdistill.objectives.method_distiller import MethodDistiller
    from kdistill.objectives.protocol import Objective
    from kdistill.objectives.supervised import Supervised
    from kdistill.record import RunRecord
    from kdistill.teachers.ensemble import EnsembleTeacher
    from kdistill.teachers.frozen import FrozenTeacher, Renormalize, as_teacher
    from kdistill.teachers.protocol import Teacher
    from kdistill.trust import CodeTrust
    from kdistill.types import Batch, DistillerOutput, LossOutput, StudentOutput, TeacherOutput
