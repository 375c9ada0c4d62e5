"""Distiller's command line and YAML compression schedules, translated into a kdistill config.

Distiller (Intel Labs, no longer maintained) drives distillation, pruning and quantization-aware
training from ``compress_classifier.py``'s flags and a YAML schedule. :func:`translate_flags`
turns both into the plain data of a kdistill run config (only the keys that differ from
kdistill's defaults, ready to print as YAML) plus notes on what was mapped approximately, never
acts, or is ignored. What cannot be mapped is a :class:`DistillerError` naming it and what is
supported: nothing is skipped silently.

The modules: ``names`` (models, parameter and layer names), ``flags`` (the command line and the
dataset directory), ``schedule`` (the YAML file: instances, policies, their epochs), and one
module per schedule section: ``pruners``, ``regularizers``, ``quantizers``, ``lr``,
``thinning``. The sections produce kdistill's typed policies (:mod:`kdistill.policies`).
"""

from kdistill.interop.distiller.errors import DistillerError, Translation
from kdistill.interop.distiller.flags import DISTILLER_DEFAULTS, infer_dataset, translate_flags
from kdistill.interop.distiller.names import (
    KDISTILL_ARCHS,
    map_arch,
    override_key,
    parameter_to_module,
)
from kdistill.interop.distiller.schedule import translate_schedule

__all__ = [
    "DISTILLER_DEFAULTS",
    "KDISTILL_ARCHS",
    "DistillerError",
    "Translation",
    "infer_dataset",
    "map_arch",
    "override_key",
    "parameter_to_module",
    "translate_flags",
    "translate_schedule",
]
