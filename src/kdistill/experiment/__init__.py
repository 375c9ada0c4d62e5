"""The run assembly: from a ``RunConfig`` to a finished run.

:mod:`.assembly` builds the parts of a run (``build_run``: the machine, ``assemble``,
``preflight``), :mod:`.runner` trains it (``run``, with :class:`RunOptions`),
:mod:`.rundir` decides where it lives and who may write it, :mod:`.finish` writes what it
leaves, :mod:`.teachers` and :mod:`.teacher_cache` provide its teacher, :mod:`.loading` turns
model files back into networks, and :mod:`.sweep` runs many settings of one config.
"""

from kdistill.experiment.assembly import (
    RunParts,
    assemble,
    build_eval_loaders,
    build_objective,
    build_optimizer,
    build_run,
    build_student,
    build_train_loader,
    code_trust,
    configure_torch,
    preflight,
    resolve_device,
)
from kdistill.experiment.loading import LoadedModel, build_from_spec, load_model
from kdistill.experiment.options import RunOptions
from kdistill.experiment.rundir import (
    RunDirError,
    group_dir,
    latest_link,
    link_latest,
    run_dir_for,
    run_identity,
)
from kdistill.experiment.runner import RunResult, run, train_or_reuse
from kdistill.experiment.teacher_cache import prepare_teacher_cache
from kdistill.experiment.teachers import (
    TeacherCheckError,
    TeacherSetup,
    build_teacher,
    check_model_fits_data,
    check_teacher,
    input_adapter,
    model_spec,
)

__all__ = [
    "LoadedModel",
    "RunDirError",
    "RunOptions",
    "RunParts",
    "RunResult",
    "TeacherCheckError",
    "TeacherSetup",
    "assemble",
    "build_eval_loaders",
    "build_from_spec",
    "build_objective",
    "build_optimizer",
    "build_run",
    "build_student",
    "build_teacher",
    "build_train_loader",
    "check_model_fits_data",
    "check_teacher",
    "code_trust",
    "configure_torch",
    "group_dir",
    "input_adapter",
    "latest_link",
    "link_latest",
    "load_model",
    "model_spec",
    "preflight",
    "prepare_teacher_cache",
    "resolve_device",
    "run",
    "run_dir_for",
    "run_identity",
    "train_or_reuse",
]
