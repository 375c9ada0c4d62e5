"""Reference models and the one registry that names them."""

from kdistill.models.registry import MODELS, build_model, builder_args, resolve_builder

__all__ = ["MODELS", "build_model", "builder_args", "resolve_builder"]
