"""What a run leaves behind: ``metrics.jsonl``, ``summary.json``, TensorBoard events.

Only the main process of a run writes (``enabled=False`` everywhere else).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.atomic import atomic_write_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunRecorder:
    """Appends one JSON line per epoch and mirrors scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files (``tb/``).
        enabled: ``False`` turns every method into a no-op (non-main processes).
    """

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool = True, enabled: bool = True
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self._writer = None

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def start(self, first_epoch: int, first_step: int) -> None:
        """Open the logs; on resume, forget what was logged for epochs that will run again."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if first_epoch > 0 and self.metrics_path.is_file():
            kept = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) < first_epoch
            ]
            atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        elif first_epoch == 0:
            self.metrics_path.unlink(missing_ok=True)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used: slow

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=first_step or None)

    def log_epoch(self, record: Mapping[str, Any], step: int) -> None:
        """Append one epoch's record and write its numeric entries as TensorBoard scalars."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(dict(record)), sort_keys=True) + "\n")
        if self._writer is not None:
            for key, value in _flatten(record).items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and key != "epoch"
                ):
                    self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        """Atomically write ``run_dir/name`` as indented JSON."""
        if self.enabled:
            atomic_write_text(
                self.run_dir / name,
                json.dumps(_jsonable(dict(data)), indent=2, sort_keys=True) + "\n",
            )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
