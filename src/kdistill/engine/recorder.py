"""``metrics.jsonl`` and TensorBoard events: a view of the trainer's in-memory history.

The history lives in the training state (and so in every checkpoint); this callback appends
each epoch's record to ``metrics.jsonl`` and mirrors its scalars to TensorBoard. On a resume
it rewrites the file from the restored history, so a line torn by a crash, or written for an
epoch that is being run again, never survives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.engine.trainer import Callback, Trainer
from kdistill.files import METRICS, TENSORBOARD, atomic_write_text, os_errors


def jsonable(value: Any) -> Any:
    """JSON has no NaN/Inf: such values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def metrics_line(record: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(dict(record)), sort_keys=True) + "\n"


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"test": {"top1": x}}`` -> ``{"test/top1": x}``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


class MetricsLog(Callback):
    """Writes one JSON line per epoch and TensorBoard scalars (only where ``enabled``)."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS
        self.tensorboard_dir = Path(run_dir) / TENSORBOARD
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self._writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        history = trainer.state.history
        atomic_write_text(self.path, "".join(metrics_line(r) for r in history))
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used: slow

            self._writer = SummaryWriter(
                str(self.tensorboard_dir), purge_step=trainer.state.step if history else None
            )

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with os_errors(self.path, "write"), open(self.path, "a", encoding="utf-8") as f:
            f.write(metrics_line(record))
        if self._writer is not None:
            for key, value in flatten(record).items():
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if number and key not in ("epoch", "step"):
                    self._writer.add_scalar(key, value, global_step=record["step"])
            self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
