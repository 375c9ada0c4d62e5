"""Classification metrics, accumulated over batches: top-k, loss, agreement, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

ECE_BINS = 15


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k scores, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets[:, None]
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): the accuracy-vs-confidence gap, averaged over equal-width bins."""
    if confidence.numel() == 0:
        return 0.0
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence.clamp(1e-12, 1), edges[1:-1], right=True)
    ece = 0.0
    n = confidence.numel()
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        if count:
            gap = abs(float(correct[in_bin].float().mean()) - float(confidence[in_bin].mean()))
            ece += gap * count / n
    return ece


@dataclass
class ClassificationMeter:
    """Accumulates predictions over batches; :meth:`result` gives the metrics.

    Keeps each sample's prediction, confidence and correctness (for calibration and for
    comparing predictions with a teacher's), and per-class counts of predictions and labels to
    spot a collapsed model.
    """

    num_classes: int
    loss_sum: float = 0.0
    count: int = 0
    top1: int = 0
    top5: int = 0
    predicted: Tensor = field(init=False)
    labelled: Tensor = field(init=False)
    predictions: list[Tensor] = field(default_factory=list)
    confidences: list[Tensor] = field(default_factory=list)
    corrects: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.predicted = torch.zeros(self.num_classes, dtype=torch.int64)
        self.labelled = torch.zeros(self.num_classes, dtype=torch.int64)

    def update(self, logits: Tensor, targets: Tensor, loss_sum: float) -> None:
        logits = logits.detach().float()
        hits = topk_correct(logits, targets)
        self.top1 += hits[1]
        self.top5 += hits[5]
        self.loss_sum += loss_sum
        self.count += int(targets.numel())
        probs = logits.softmax(dim=1)
        conf, pred = probs.max(dim=1)
        self.predicted += torch.bincount(pred.cpu(), minlength=self.num_classes)
        self.labelled += torch.bincount(targets.cpu(), minlength=self.num_classes)
        self.predictions.append(pred.cpu())
        self.confidences.append(conf.cpu())
        self.corrects.append((pred == targets).cpu())

    def all_predictions(self) -> Tensor:
        """This process's predictions, in the order the batches came."""
        return (
            torch.cat(self.predictions) if self.predictions else torch.zeros(0, dtype=torch.int64)
        )

    def result(self, *, across_processes: bool = True) -> dict[str, float]:
        """The metrics over every batch seen by this process and, in a data-parallel run with
        ``across_processes``, by all the others (each evaluates its share of the split; every
        process must then call this).

        ``top_class_share`` is the fraction of samples predicted as the most predicted class;
        ``majority_share`` the fraction of the most frequent true class (the share a healthy
        model's most predicted class is compared with).
        """
        from kdistill.engine.distributed import all_gather_tensor, all_reduce_sum

        counts = [float(self.top1), float(self.top5), self.loss_sum, float(self.count)]
        per_class = [float(v) for v in self.predicted] + [float(v) for v in self.labelled]
        conf = torch.cat(self.confidences) if self.confidences else torch.zeros(0)
        correct = torch.cat(self.corrects) if self.corrects else torch.zeros(0, dtype=torch.bool)
        if across_processes:
            counts = all_reduce_sum(counts, torch.device("cpu"))
            per_class = all_reduce_sum(per_class, torch.device("cpu"))
            conf, correct = all_gather_tensor(conf), all_gather_tensor(correct)
        top1, top5, loss_sum, count = counts
        n = max(1.0, count)
        return {
            "top1": top1 / n,
            "top5": top5 / n,
            "loss": loss_sum / n,
            "ece": expected_calibration_error(conf, correct),
            "top_class_share": max(per_class[: self.num_classes]) / n,
            "majority_share": max(per_class[self.num_classes :]) / n,
        }
