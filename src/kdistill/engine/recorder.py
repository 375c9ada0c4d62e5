"""``metrics.jsonl`` and TensorBoard events: a view of the trainer's in-memory history.

The history lives in the training state (and so in every checkpoint); this callback appends
each epoch's record to ``metrics.jsonl`` and mirrors its scalars to TensorBoard. On a resume
it rewrites the file from the restored history, so a line torn by a crash, or written for an
epoch that is being run again, never survives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.engine.trainer import Callback, Trainer
from kdistill.files import METRICS, atomic_write_text, jsonable, os_errors


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
    """Writes one JSON line per epoch and TensorBoard events (only where ``enabled``).

    TensorBoard gets every epoch's metrics, the training loss (running mean of the epoch so
    far) and learning rate every ``log_every`` optimizer steps (default: 50, or a quarter epoch
    when epochs are shorter than 200 steps), the resolved config as text,
    and the run's hyper-parameters with its final metrics (the hparams plugin).

    Args:
        run_dir: where ``metrics.jsonl`` goes.
        tensorboard_dir: where the event files go (``None``: no TensorBoard). kdistill keeps
            them in a tree of their own, ``<out_dir>/tensorboard/<run>/seed-N``, which no
            ``<out_dir>/<name>`` link points into, so TensorBoard shows each run once.
        hparams: the settings shown in the hparams table. config_text: the config as YAML.
        enabled: whether this process writes (only the first of a data-parallel run does).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard_dir: str | Path | None = None,
        hparams: Mapping[str, Any] | None = None,
        config_text: str | None = None,
        log_every: int | None = None,
        enabled: bool = True,
    ) -> None:
        self.path = Path(run_dir) / METRICS
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.enabled = enabled
        self.tensorboard = self.tensorboard_dir is not None and enabled
        self.hparams = dict(hparams or {})
        self.config_text = config_text
        self.log_every = log_every
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
            if self.log_every is None:
                self.log_every = max(1, min(50, len(trainer.train_loader) // 4))
            if self.config_text and not history:
                self._writer.add_text("config", f"```yaml\n{self.config_text}\n```")

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self._writer is None or step % (self.log_every or 50):
            return
        means = trainer.epoch_sums.means()  # this epoch so far (one host sync every log_every)
        for key, value in means.items():
            if key.startswith("loss"):
                self._writer.add_scalar(f"train_steps/{key}", value, global_step=step)
        self._writer.add_scalar(
            "train_steps/lr", trainer.optimizer.param_groups[0]["lr"], global_step=step
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
        if self._writer is not None and trainer.state.history:
            last = trainer.state.history[-1]
            final = {
                f"final/{k}": v
                for k, v in flatten({s: last[s] for s in ("train", *trainer.eval_loaders)}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            hparams = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in self.hparams.items()
            }
            # run_name "." keeps the hparams summary in this run's own directory
            self._writer.add_hparams(hparams, final, run_name=".")
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
