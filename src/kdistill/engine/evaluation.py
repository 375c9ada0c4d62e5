"""The one evaluation loop: a predictor over a split, metrics and per-sample predictions.

Used for the student after every epoch, for a teacher before it may teach, for a saved model
(``kdistill eval``) and for an exported model (an onnxruntime session as the predictor).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.engine.metrics import ClassificationMeter
from kdistill.losses.tokens import default_chunk_size
from kdistill.objectives.tokens import output_head
from kdistill.types import IGNORE_INDEX, Batch, logits_of

Predictor = Callable[[Tensor], Any]
"""``inputs -> model output`` (logits, or anything :func:`kdistill.types.logits_of` reads)."""


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a split (over every process) and this process's predictions, in order."""

    metrics: dict[str, float]
    predictions: Tensor


def evaluate(
    predictor: nn.Module | Predictor,
    loader: Iterable[Batch],
    num_classes: int,
    *,
    across_processes: bool = True,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> Evaluation:
    """Top-1/top-5/loss/ECE of a predictor on a split, without changing it. For a language
    model (logits ``(B, T, V)``, labels ``(B, T)``) the samples are the tokens that take a loss:
    ``loss`` is the mean negative log-likelihood per token, ``perplexity`` its exponential, ``top1`` the share of tokens predicted right, and the
    predictions are those tokens'.

    Args:
        predictor: a network (put in eval mode for the loop and restored after), or any
            ``inputs -> logits`` function (an ensemble, an onnxruntime session).
        loader: the split's batches (this process's share in a data-parallel run).
        num_classes: classes of the task.
        across_processes: reduce the metrics over every process (each must call this).
        autocast: a context for the forward passes (mixed precision), or none.
    """
    module = predictor if isinstance(predictor, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    meter = ClassificationMeter(num_classes)
    tokens = False
    # a language model with an output head over its last hidden states: its kept tokens'
    # logits are made a chunk at a time (never the whole batch's (tokens, vocab) at once)
    head = output_head(module) if module is not None else None
    try:
        with torch.inference_mode(), autocast or contextlib.nullcontext():
            for batch in loader:
                if head is not None and batch.inputs.dim() == 2:
                    tokens = True
                    _chunked_tokens(module, head, batch, meter)  # type: ignore[arg-type]
                    continue
                logits = logits_of(predictor(batch.inputs))
                targets = batch.targets.to(logits.device)
                if logits.dim() == 3:  # a language model: each kept token is a sample
                    tokens = True
                    kept = targets != IGNORE_INDEX
                    logits, targets = logits[kept], targets[kept]
                logits = logits.float()  # after the mask: no float copy of every position
                loss_sum = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
                meter.update(logits, targets, float(loss_sum))
    finally:
        if module is not None:
            module.train(was_training)
    metrics = meter.result(across_processes=across_processes)
    if tokens:  # exp of the mean negative log-likelihood per token (capped: no overflow)
        metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))
    return Evaluation(metrics, meter.all_predictions())


def _chunked_tokens(
    model: nn.Module, head: nn.Linear, batch: Batch, meter: ClassificationMeter
) -> None:
    """Meter a language model's batch from its last hidden states, a chunk of kept tokens at a
    time (each chunk's logits about 32 MiB of float32)."""
    hidden = model(batch.inputs, last_hidden=True)
    targets = batch.targets.to(hidden.device)
    kept = targets != IGNORE_INDEX
    rows, labels = hidden[kept], targets[kept]
    step = default_chunk_size(head.out_features)
    for start in range(0, len(rows), step):
        logits = head(rows[start : start + step]).float()
        part = labels[start : start + step]
        loss_sum = torch.nn.functional.cross_entropy(logits, part, reduction="sum")
        meter.update(logits, part, float(loss_sum))
