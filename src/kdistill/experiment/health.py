"""Checks that a run is healthy before and while it spends time: how hard distillation pulls on
the student, and what to advise when a student collapses."""

from __future__ import annotations

from collections.abc import Callable

from kdistill.config.schema import RunConfig
from kdistill.data import BatchLoader
from kdistill.objectives import Objective

Log = Callable[[str], None]

# Above this ratio of the distillation loss's gradient to a plain cross-entropy gradient
# (w.r.t. the logits, first batch), a student trained with a learning rate tuned for
# cross-entropy is at risk. Measured: 3.6x collapsed a LeNet-5 or left it 4.5 points below
# scratch (shared/research/peer-findings.md); 2.6-2.9x killed 2x30 MLP students on
# Fashion-MNIST at lr 0.05 in their first epoch, while up to 2.0x trained (docs/results.md).
GRADIENT_RATIO_WARNING = 2.5


def gradient_check(
    cfg: RunConfig, objective: Objective, loader: BatchLoader, log: Log
) -> tuple[float | None, list[str]]:
    """The first batch's gradient ratio (:meth:`Objective.gradient_ratio`), logged, and a
    warning when it is high and nothing clips the gradient."""
    loader.set_epoch(0)
    batch = next(iter(loader))
    ratio = objective.gradient_ratio(
        batch.inputs, batch.targets, sample_ids=batch.sample_ids, views=batch.views
    )
    if ratio is None:
        return None, []
    log(
        f"the distillation loss's gradient is {ratio:.1f}x a plain cross-entropy gradient (first batch)"
    )
    kd = cfg.kd
    if kd is None or ratio <= GRADIENT_RATIO_WARNING or cfg.optim.grad_clip is not None:
        return ratio, []
    warning = (
        f"with kd.alpha={kd.alpha}, beta={kd.resolved_beta}, T={kd.temperature} the steps are "
        f"about {ratio:.1f}x those optim.lr={cfg.optim.lr} takes without a teacher; if the "
        "student trains worse than from scratch or collapses, set optim.grad_clip (2.0 "
        "worked for LeNet-5 and MLPs on Fashion-MNIST), lower optim.lr, or lower kd.beta / "
        "kd.temperature"
    )
    log(f"WARNING: {warning}")
    return ratio, [warning]


def collapse_advice(cfg: RunConfig) -> str:
    """What to try when the student collapses, for this kind of run."""
    if cfg.kd is not None:
        return (
            "In distillation this usually means the T^2-scaled soft loss pushed too hard for the "
            "learning rate: try optim.grad_clip: 2.0, a lower optim.lr, or a lower "
            "kd.temperature / kd.beta (a very confident teacher gives large gradients)."
        )
    return "Try a lower optim.lr or optim.grad_clip: 2.0, and check the labels of the data."
