"""Reference models, the one registry that names them, model specs and model files."""

from kdistill.models.costs import count_macs, count_params, cpu_latency_ms
from kdistill.models.files import (
    ModelFile,
    ResolvedModel,
    load_state_file,
    load_weights,
    read_model_file,
    read_model_spec,
    resolve_model,
    resolve_model_path,
    save_model_file,
)
from kdistill.models.registry import MODELS, build_model, builder_args, resolve_builder
from kdistill.models.spec import ModelFileError, ModelSpec

__all__ = [
    "MODELS",
    "ModelFile",
    "ModelFileError",
    "ModelSpec",
    "ResolvedModel",
    "build_model",
    "builder_args",
    "count_macs",
    "count_params",
    "cpu_latency_ms",
    "load_state_file",
    "load_weights",
    "read_model_file",
    "read_model_spec",
    "resolve_builder",
    "resolve_model",
    "resolve_model_path",
    "save_model_file",
]
