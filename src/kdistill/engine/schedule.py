"""Learning-rate schedules as pure functions of the optimizer step.

The trainer sets ``lr = base_lr * lr_factor(step)`` before every step, so resuming needs only
the step count: there is no scheduler object whose state could drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kdistill.config.schema import ScheduleConfig


def build_lr_factor(
    cfg: ScheduleConfig, *, steps_per_epoch: int, epochs: int
) -> Callable[[int], float]:
    """``step -> multiplier of the peak lr`` for ``cfg`` over ``epochs * steps_per_epoch`` steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch) if cfg.name != "onecycle" else 0
    if warmup >= total:
        raise ValueError(
            f"schedule.warmup_epochs={cfg.warmup_epochs} covers the whole run of {epochs} epochs"
        )

    def after_warmup(step: int) -> float:
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos
        if cfg.name == "multistep":
            epoch = step // steps_per_epoch
            gammas = cfg.gammas or (cfg.gamma,) * len(cfg.milestones)
            return math.prod(g for m, g in zip(cfg.milestones, gammas) if epoch >= m)
        if cfg.name == "exponential":  # stepped once per epoch, as torch's ExponentialLR
            return cfg.gamma ** (step // steps_per_epoch)
        # onecycle: linear rise from 1/div_factor to 1, then cosine down to
        # 1 / (div_factor * final_div_factor) (the shape of torch's OneCycleLR).
        peak = max(1, round(cfg.pct_start * total))
        start = 1.0 / cfg.div_factor
        end = start / cfg.final_div_factor
        if step < peak:
            return start + (1 - start) * step / peak
        progress = (step - peak) / max(1, total - peak)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return after_warmup(step)

    return factor
