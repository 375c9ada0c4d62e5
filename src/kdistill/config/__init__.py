"""Run configuration: the typed schema, YAML loading, dotted overrides, the shipped recipes.
Never imports torch."""

from kdistill.config.errors import ConfigError
from kdistill.config.loader import (
    apply_overrides,
    apply_values,
    config_hash,
    dump_yaml,
    from_dict,
    load_config,
    parse_yaml,
    read_yaml,
    to_dict,
)
from kdistill.config.recipes import (
    UnknownRecipeError,
    list_recipes,
    recipes_root,
    resolve_config_path,
)
from kdistill.config.schema import (
    AugmentConfig,
    DataConfig,
    KDConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TeacherCacheConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "KDConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TeacherCacheConfig",
    "TrainConfig",
    "UnknownRecipeError",
    "apply_overrides",
    "apply_values",
    "config_hash",
    "dump_yaml",
    "from_dict",
    "list_recipes",
    "load_config",
    "parse_yaml",
    "read_yaml",
    "recipes_root",
    "resolve_config_path",
    "to_dict",
]
