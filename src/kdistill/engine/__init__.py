"""The training engine: loop, callbacks, checkpoints, metrics and run records."""

from kdistill.engine.checkpoint import (
    CheckpointError,
    ModelSpec,
    load_model,
    read_model_spec,
    save_model_file,
)
from kdistill.engine.trainer import (
    Callback,
    CollapseError,
    NonFiniteLossError,
    Trainer,
    TrainingError,
    TrainState,
)

__all__ = [
    "Callback",
    "CheckpointError",
    "CollapseError",
    "ModelSpec",
    "NonFiniteLossError",
    "TrainState",
    "Trainer",
    "TrainingError",
    "load_model",
    "read_model_spec",
    "save_model_file",
]
