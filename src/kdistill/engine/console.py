"""What a run shows while it trains: a progress bar on a terminal, one line per epoch.

The bar shows the epoch's running means (loss and its parts, accuracy), samples per second and
the whole run's remaining time; it is drawn only when stderr is a terminal. Every epoch ends
with one plain line, so logs redirected to a file stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from kdistill.engine.trainer import Callback, Trainer

Log = Callable[[str], None]


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def loss_summary(metrics: Mapping[str, float]) -> str:
    """``loss 0.41 (student 0.30, distill 0.05)``: the mean loss and its unweighted parts."""
    parts = [
        f"{k[5:]} {v:.4g}"  # significant digits: a part may be 1e-5 (PKT) or 20 (CRD)
        for k, v in sorted(metrics.items())
        if k.startswith("loss_") and not k.endswith("_weighted")
    ]
    return f"loss {metrics['loss']:.4f}" + (f" ({', '.join(parts)})" if parts else "")


class Console(Callback):
    """Progress bar (terminals only) and one line per epoch.

    Args:
        log: where epoch lines go.
        progress: draw a bar when stderr is a terminal.
        every: optimizer steps between updates of the bar (each reads the running sums).
    """

    def __init__(self, log: Log, *, progress: bool = True, every: int = 10) -> None:
        self.log = log
        self.progress = progress and sys.stderr.isatty()
        self.every = every
        self._bar: Any = None
        self._epoch_started = 0.0
        self._fit_started = 0.0
        self._first_epoch = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._fit_started = time.perf_counter()
        self._first_epoch = trainer.state.epoch

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch_started = time.perf_counter()
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=len(trainer.train_loader),
                desc=f"epoch {epoch + 1}/{trainer.loop.epochs}",
                leave=False,
                dynamic_ncols=True,
            )

    def _eta(self, trainer: Trainer, done_fraction_of_epoch: float) -> str:
        epochs_done = trainer.state.epoch - self._first_epoch + done_fraction_of_epoch
        if epochs_done <= 0:
            return "?"
        per_epoch = (time.perf_counter() - self._fit_started) / epochs_done
        left = trainer.loop.epochs - trainer.state.epoch - done_fraction_of_epoch
        return format_duration(per_epoch * left)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        n = self._bar.n
        if n % self.every and n != self._bar.total:
            return
        means = trainer.epoch_sums.means()  # running means of this process's batches
        elapsed = max(1e-9, time.perf_counter() - self._epoch_started)
        self._bar.set_postfix_str(
            f"{loss_summary(means)} acc {means.get('top1', 0.0):.1%} "
            f"{trainer.epoch_sums.samples / elapsed:,.0f} samples/s "
            f"run eta {self._eta(trainer, n / max(1, self._bar.total))}",
            refresh=False,
        )

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        train = record["train"]
        parts = [f"epoch {epoch + 1}/{trainer.loop.epochs}", loss_summary(train)]
        parts.append(f"train {train['top1']:.2%}")
        for name in trainer.eval_loaders:
            metrics = record[name]
            if "perplexity" in metrics:  # a language model
                parts.append(f"{name} ppl {metrics['perplexity']:.2f} ({metrics['top1']:.1%})")
            else:
                parts.append(f"{name} {metrics['top1']:.2%}")
            if "agreement" in metrics:
                parts.append(f"agree {metrics['agreement']:.1%}")
        samples = trainer.epoch_sums.samples
        parts.append(
            f"{record['epoch_time_s']:.2f}s ({samples / max(1e-9, record['epoch_time_s']):,.0f}/s)"
        )
        if epoch + 1 < trainer.loop.epochs:
            parts.append(f"eta {self._eta(trainer, 0.0)}")
        self.log("  ".join(parts))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
