"""Run configuration: the typed schema, YAML loading, dotted overrides. Never imports torch."""

from kdistill.config.loader import (
    ConfigError,
    apply_overrides,
    apply_values,
    config_hash,
    dump_yaml,
    from_dict,
    load_config,
    to_dict,
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
    "apply_overrides",
    "apply_values",
    "config_hash",
    "dump_yaml",
    "from_dict",
    "load_config",
    "to_dict",
]
