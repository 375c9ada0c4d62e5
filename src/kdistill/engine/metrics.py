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

    Keeps per-sample confidence and correctness (two floats per sample) for calibration, and a
    per-class prediction count to spot a collapsed model.
    """

    num_classes: int
    loss_sum: float = 0.0
    count: int = 0
    top1: int = 0
    top5: int = 0
    agree: int = 0
    agree_count: int = 0
    predicted: Tensor = field(init=False)
    confidences: list[Tensor] = field(default_factory=list)
    corrects: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.predicted = torch.zeros(self.num_classes, dtype=torch.int64)

    def update(
        self, logits: Tensor, targets: Tensor, loss_sum: float, teacher_pred: Tensor | None = None
    ) -> None:
        logits = logits.detach().float()
        hits = topk_correct(logits, targets)
        self.top1 += hits[1]
        self.top5 += hits[5]
        self.loss_sum += loss_sum
        self.count += int(targets.numel())
        probs = logits.softmax(dim=1)
        conf, pred = probs.max(dim=1)
        self.predicted += torch.bincount(pred.cpu(), minlength=self.num_classes)
        self.confidences.append(conf.cpu())
        self.corrects.append((pred == targets).cpu())
        if teacher_pred is not None:
            self.agree += int((pred == teacher_pred.to(pred.device)).sum())
            self.agree_count += int(targets.numel())

    def result(self, *, across_processes: bool = True) -> dict[str, float]:
        """The metrics over every batch seen by this process and, in a data-parallel run with
        ``across_processes``, by all the others (each evaluates its share of the split; every
        process must then call this)."""
        from kdistill.engine.distributed import all_gather_tensor, all_reduce_sum

        counts = [
            float(self.top1),
            float(self.top5),
            self.loss_sum,
            float(self.count),
            float(self.agree),
            float(self.agree_count),
        ]
        predicted_counts = [float(v) for v in self.predicted]
        conf = torch.cat(self.confidences) if self.confidences else torch.zeros(0)
        correct = torch.cat(self.corrects) if self.corrects else torch.zeros(0, dtype=torch.bool)
        if across_processes:
            counts = all_reduce_sum(counts, torch.device("cpu"))
            predicted_counts = all_reduce_sum(predicted_counts, torch.device("cpu"))
            conf, correct = all_gather_tensor(conf), all_gather_tensor(correct)
        top1, top5, loss_sum, count, agree, agree_count = counts
        predicted = torch.tensor(predicted_counts)
        n = max(1.0, count)
        out = {
            "top1": top1 / n,
            "top5": top5 / n,
            "loss": loss_sum / n,
            "ece": expected_calibration_error(conf, correct),
            "top_class_share": float(predicted.max()) / n,
        }
        if agree_count:
            out["agreement"] = agree / agree_count
        return out
