"""Built-in callbacks that watch training: agreement with a teacher, and collapse."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from kdistill.engine.distributed import all_reduce_sum
from kdistill.engine.evaluation import Evaluation
from kdistill.engine.trainer import Callback, CollapseError, Trainer

Log = Callable[[str], None]


class Agreement(Callback):
    """Adds ``agreement`` (the fraction of samples where student and teacher predict the same
    class) to each evaluated split's metrics.

    Args:
        reference: per split, the teacher's predictions on this process's share of it, in the
            loader's order (computed once for a frozen teacher).
        predict: ``inputs -> teacher predictions``, for a teacher that changes (joint training);
            then the reference is computed again at every evaluation.
    """

    def __init__(
        self,
        reference: Mapping[str, Tensor] | None = None,
        predict: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.reference = dict(reference or {})
        self.predict = predict

    def _teacher_predictions(self, trainer: Trainer, split: str) -> Tensor | None:
        if self.predict is not None:
            with torch.inference_mode():
                return torch.cat(
                    [self.predict(b.inputs).cpu() for b in trainer.eval_loaders[split]]
                )
        return self.reference.get(split)

    def on_eval_end(self, trainer: Trainer, split: str, evaluation: Evaluation) -> None:
        teacher = self._teacher_predictions(trainer, split)
        if teacher is None:
            return
        student = evaluation.predictions
        if teacher.shape != student.shape:
            raise ValueError(
                f"agreement on {split}: {len(teacher)} teacher predictions for "
                f"{len(student)} student predictions"
            )
        agree, count = all_reduce_sum(
            [float((teacher == student).sum()), float(len(student))], torch.device("cpu")
        )
        evaluation.metrics["agreement"] = agree / max(1.0, count)


# The most predicted class's share of a split, above which (and above twice the largest true
# class's share) the student is taken to predict one class for most inputs.
COLLAPSE_SHARE = 0.5
# A loss above this multiple of ln C (uniform predictions) means confident, wrong predictions.
CONFIDENTLY_WRONG = 2.0
# One class for this share of the inputs or more: the answer no longer depends on the input.
CONSTANT_SHARE = 0.99


def collapse_symptom(metrics: Mapping[str, float], num_classes: int) -> str | None:
    """What is wrong with a split's predictions, or ``None``: accuracy at or below chance, or
    one class predicted for most inputs (more than half, and more than twice the share of the
    most frequent true class). Not judged with fewer than 3 classes."""
    if num_classes < 3:
        return None
    chance = 1.0 / num_classes
    if metrics["top1"] <= chance:
        return f"its top-1 {metrics['top1']:.1%} is at or below chance ({chance:.1%})"
    share = metrics["top_class_share"]
    if share > COLLAPSE_SHARE and share > 2 * metrics.get("majority_share", chance):
        return f"it predicts one class for {share:.0%} of the samples"
    return None


def collapse_reason(metrics: Mapping[str, float], num_classes: int) -> str | None:
    """Why a split's metrics show a collapsed student, or ``None``.

    A student with a symptom (:func:`collapse_symptom`) has collapsed only if
    it is also dead or *confidently* wrong: it gives the same answer for (almost) every input
    (a network whose units all died: the stock Fashion-MNIST recipe leaves LeNet-5 so within
    its first epoch), or its loss is above twice ``ln C``, what predicting every class equally
    costs (distillation that pushed the logits too far; the collapse of the probe sat at 12.4).
    A slow start has neither signature: its predictions still vary with the input and its loss
    stays near ``ln C`` (LeNet-5 on the digits spends its first epochs there). After the last
    epoch, a symptom without either signature (a student that has not learned yet: one epoch
    from scratch) is :func:`not_learned`'s, a warning: the run's files are still written, since
    nothing went wrong that a longer run would not fix.
    """
    symptom = collapse_symptom(metrics, num_classes)
    if symptom is None:
        return None
    if metrics["top_class_share"] >= CONSTANT_SHARE:
        return f"{symptom}, and it no longer depends on its input (the same class for all)"
    uniform = math.log(num_classes)
    if metrics["loss"] > CONFIDENTLY_WRONG * uniform:
        return (
            f"{symptom}, and it is confidently wrong (loss {metrics['loss']:.2f}, more than "
            f"{CONFIDENTLY_WRONG:g}x the {uniform:.2f} of predicting every class equally)"
        )
    return None


def not_learned(metrics: Mapping[str, float], num_classes: int) -> str | None:
    """Why a student after its last epoch is no better than chance without having collapsed
    (:func:`collapse_reason`), or ``None``."""
    symptom = collapse_symptom(metrics, num_classes)
    if symptom is None or collapse_reason(metrics, num_classes) is not None:
        return None
    return (
        f"{symptom} after the last epoch, though its predictions still vary with the input and "
        f"its loss {metrics['loss']:.2f} is near the {math.log(num_classes):.2f} of predicting "
        "every class equally: it has not learned yet"
    )


class CollapseGuard(Callback):
    """After every epoch, judges the first eval split with :func:`collapse_reason`. A collapse
    stops the run (``"stop"``, the default: the last good checkpoint is kept), is logged
    (``"warn"``) or ignored.

    Warnings are kept in :attr:`warnings` for the run record.
    """

    def __init__(self, action: str, log: Log, advice: str) -> None:
        self.action = action
        self.log = log
        self.advice = advice
        self.warnings: list[str] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.action == "ignore":
            return
        split = next((name for name in trainer.eval_loaders if name in record), None)
        if split is None:
            return
        if "perplexity" in record[split]:
            # A language model predicting its most frequent token everywhere after a short
            # epoch is at the unigram stage of learning, not collapsed; a non-finite loss still
            # stops the run (the trainer's check).
            return
        final = epoch + 1 == trainer.loop.epochs
        reason = collapse_reason(record[split], trainer.loop.num_classes)
        slow = final and not_learned(record[split], trainer.loop.num_classes)
        if slow:
            message = (
                f"after epoch {epoch + 1} (the last) the student is no better than chance on "
                f"the {split} split: {slow}. Train longer (train.epochs) or with a higher "
                "optim.lr."
            )
            self.log(f"WARNING: {message}")
            self.warnings.append(message)
            return
        if reason is None:
            return
        message = (
            f"after epoch {epoch + 1} the student has collapsed on the {split} split: {reason} "
            f"({split} top-1 {record[split]['top1']:.1%}). {self.advice}"
        )
        if self.action == "stop":
            raise CollapseError(
                f"{message} Stopped; the checkpoint of the last good epoch is kept "
                "(train.on_collapse: warn lets such a run go on)."
            )
        self.log(f"WARNING: {message}")
        if not self.warnings:  # one entry per run is enough for the record
            self.warnings.append(message)

    def state_dict(self) -> dict[str, Any]:
        return {"warnings": list(self.warnings)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.warnings = list(state["warnings"])
