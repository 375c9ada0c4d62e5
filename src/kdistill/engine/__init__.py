"""The training engine: the loop and its callbacks, checkpoints, evaluation, metrics, records
of epochs, the learning-rate schedule and data-parallel helpers."""

from kdistill.engine.callbacks import Agreement, CollapseGuard
from kdistill.engine.checkpoint import Checkpoint, Checkpointer, CheckpointError
from kdistill.engine.console import Console
from kdistill.engine.evaluation import Evaluation, evaluate
from kdistill.engine.recorder import MetricsLog
from kdistill.engine.trainer import (
    Callback,
    CollapseError,
    Loop,
    NonFiniteLossError,
    Trainer,
    TrainingError,
    TrainState,
)

__all__ = [
    "Agreement",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "CollapseError",
    "CollapseGuard",
    "Console",
    "Evaluation",
    "Loop",
    "MetricsLog",
    "NonFiniteLossError",
    "TrainState",
    "Trainer",
    "TrainingError",
    "evaluate",
]
