"""Checks that a run is healthy before and while it spends time: how hard distillation pulls on
the student, whether the teacher is better than the student without it, and what to advise
when a student collapses."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from kdistill.config.schema import RunConfig
from kdistill.data import BatchLoader
from kdistill.files import RECORD, SWEEP
from kdistill.objectives import Objective
from kdistill.record import RunRecord

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
    setting = (
        f"kd.methods {', '.join(m.name for m in kd.methods)} and kd.alpha={kd.alpha}"
        if kd.methods
        else f"kd.alpha={kd.alpha}, beta={kd.resolved_beta}, T={kd.temperature}"
    )
    lower = "the methods' weights or temperatures" if kd.methods else "kd.beta / kd.temperature"
    warning = (
        f"with {setting} the steps are about {ratio:.1f}x those optim.lr={cfg.optim.lr} takes "
        "without a teacher; if the student trains worse than from scratch or collapses, set "
        "optim.grad_clip (2.0 worked for LeNet-5 and MLPs on Fashion-MNIST), lower optim.lr, "
        f"or lower {lower}"
    )
    log(f"WARNING: {warning}")
    return ratio, [warning]


def collapse_advice(cfg: RunConfig) -> str:
    """What to try when the student collapses, for this kind of run."""
    if cfg.kd is not None and cfg.kd.methods:
        return (
            "In distillation this usually means a distillation term pushed too hard for the "
            "learning rate: try optim.grad_clip: 2.0, a lower optim.lr, or lower weights in "
            "kd.methods (the papers' weights were tuned for CIFAR-size feature maps)."
        )
    if cfg.kd is not None:
        return (
            "In distillation this usually means the T^2-scaled soft loss pushed too hard for the "
            "learning rate: try optim.grad_clip: 2.0, a lower optim.lr, or a lower "
            "kd.temperature / kd.beta (a very confident teacher gives large gradients)."
        )
    return "Try a lower optim.lr or optim.grad_clip: 2.0, and check the labels of the data."


def scratch_baselines(
    cfg: RunConfig, dataset: str, arch: str, params: int, test_samples: int
) -> list[tuple[Path, float]]:
    """Finished runs of the same student trained from labels alone on the same data and test
    split, found in the run tree (``out_dir``, and the run tree a sweep lives in):
    ``(run directory, test top-1)``."""
    root = Path(cfg.out_dir)
    roots = [root]
    if root.name == "runs" and (root.parent / SWEEP).is_file():  # <tree>/sweeps/<name>/runs
        roots.append(root.parents[2])
    found: dict[Path, float] = {}
    for base in roots:
        for path in sorted(base.glob(f"*/seed-*/{RECORD}")):
            try:
                record = RunRecord.read(path, verify_files=False)
            except ValueError:
                continue  # a damaged record is reported where it is read for its own sake
            same = (record.dataset, record.arch, record.params, record.test_samples)
            if record.mode == "supervised" and same == (dataset, arch, params, test_samples):
                found[path.parent.resolve()] = record.test_top1
    return sorted(found.items())


def teacher_versus_scratch(
    teacher_top1: float, baselines: list[tuple[Path, float]], test_samples: int, log: Log
) -> list[str]:
    """A warning when the teacher is worse than the student already is without it, by more
    than the test split can resolve.

    A teacher only as good as the scratch student still teaches: the demo's LeNet-5 teacher and
    its scratch MLP both score 97.77% on the digits, and distillation lifts the MLP to
    98.83 +- 0.23% over 5 seeds (scratch: 97.83 +- 0.12%). What does not teach is a teacher that
    is worse; "worse" means below the best scratch run by more than two standard errors of the
    difference of two accuracies measured on ``test_samples`` images."""
    if not baselines:
        return []
    best_dir, best = max(baselines, key=lambda item: item[1])
    p = (teacher_top1 + best) / 2
    noise = 2 * math.sqrt(2 * p * (1 - p) / max(1, test_samples))
    if teacher_top1 >= best - noise:
        return []
    warning = (
        f"the teacher ({teacher_top1:.2%} test top-1) is worse than this student trained "
        f"from scratch ({best:.2%}, {best_dir}), beyond what {test_samples} test images can "
        "resolve: learning from it will likely make the student worse; use a stronger teacher"
    )
    log(f"WARNING: {warning}")
    return [warning]
