"""The shared vocabulary: what students, teachers and losses hand to each other.

These are plain frozen dataclasses so that every component (loss, teacher, trainer, logger)
agrees on names without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""A label that takes no loss (padding, a prompt's tokens): PyTorch's cross-entropy default."""


@dataclass(frozen=True)
class StudentOutput:
    """What the student produced for one batch.

    Attributes:
        logits: ``(N, C)`` class scores (a language model's ``(N, T, V)``), or ``None`` where a
            language model's loss was computed chunk by chunk from its hidden states and its
            full logits never existed; then ``predictions`` is set.
        features: optional intermediate activations by module path (for feature distillation).
        predictions: the predicted class (token) per sample (position), when ``logits`` is
            ``None``.
    """

    logits: Tensor | None
    features: Mapping[str, Tensor] = field(default_factory=dict)
    predictions: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.predictions is None):
            raise ValueError("StudentOutput needs exactly one of logits= and predictions=")

    def predicted(self) -> Tensor:
        """The argmax of the logits, or the predictions given instead of them (no gradient)."""
        if self.predictions is not None:
            return self.predictions
        assert self.logits is not None
        return self.logits.detach().argmax(dim=-1)


@dataclass(frozen=True)
class TeacherOutput:
    """What a teacher (single, ensemble or cached) produced for one batch.

    Exactly one form is set: ``logits``, ``probs``, (a language model's cached teacher) its
    top-k tokens ``topk_ids`` with their log-probabilities ``topk_logprobs``, or (a language
    model online, when the student's loss is chunked) its last hidden states ``last_hidden``
    with its output head ``head_weight``: the logits ``last_hidden @ head_weight.T``, which the
    loss computes a chunk of tokens at a time instead of holding them all. Probabilities are
    only meaningful together with the temperature they were computed at, so ``temperature`` is
    required with ``probs`` and with the top-k; the loss refuses probabilities made at a
    temperature other than its own instead of guessing.

    Attributes:
        logits: ``(N, C)`` raw class scores (a language model's ``(N, T, V)``), or ``None``.
        probs: ``(N, C)`` class probabilities (rows sum to 1), or ``None``.
        topk_ids: ``(N, T, k)`` a language model's most likely tokens, most likely first.
        topk_logprobs: ``(N, T, k)`` their log-probabilities at ``temperature``.
        temperature: the temperature ``probs`` or ``topk_logprobs`` were computed at; ``None``
            with logits.
        features: optional intermediate activations by module path.
        last_hidden: ``(N, T, H)`` a language model's last hidden states (what its head reads).
        head_weight: ``(V, H)`` its output head (no bias), with ``last_hidden``.
        predicted: ``(N, T)`` the tokens ``last_hidden`` predicts, where a loss that computed
            their logits chunk by chunk kept them (else :meth:`predictions` computes them).
    """

    logits: Tensor | None = None
    probs: Tensor | None = None
    temperature: float | None = None
    features: Mapping[str, Tensor] = field(default_factory=dict)
    topk_ids: Tensor | None = None
    topk_logprobs: Tensor | None = None
    last_hidden: Tensor | None = None
    head_weight: Tensor | None = None
    predicted: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.topk_ids is None) != (self.topk_logprobs is None):
            raise ValueError("TeacherOutput needs topk_ids= and topk_logprobs= together")
        if (self.last_hidden is None) != (self.head_weight is None):
            raise ValueError("TeacherOutput needs last_hidden= and head_weight= together")
        if self.predicted is not None and self.last_hidden is None:
            raise ValueError("TeacherOutput(predicted=...) goes with last_hidden= only")
        forms = [
            self.logits is not None,
            self.probs is not None,
            self.topk_ids is not None,
            self.last_hidden is not None,
        ]
        if sum(forms) != 1:
            raise ValueError(
                "TeacherOutput needs exactly one of logits=, probs=, topk_ids= with "
                "topk_logprobs=, or last_hidden= with head_weight=; got "
                f"logits={'set' if forms[0] else 'None'}, probs={'set' if forms[1] else 'None'}, "
                f"topk={'set' if forms[2] else 'None'}, last_hidden={'set' if forms[3] else 'None'}"
            )
        if (self.probs is not None or self.topk_ids is not None) and self.temperature is None:
            raise ValueError(
                "TeacherOutput(probs=...) and TeacherOutput(topk_ids=...) need temperature= (the "
                "temperature the probabilities were computed at), so that the loss can check it "
                "matches its own"
            )
        if self.logits is not None and self.temperature is not None:
            raise ValueError(
                f"TeacherOutput(logits=..., temperature={self.temperature}): temperature only "
                "describes probabilities; logits are raw scores and the loss applies its own T"
            )

    @property
    def scores(self) -> Tensor:
        """Whichever of logits/probs is set; its argmax is the teacher's prediction."""
        if self.topk_ids is not None or self.last_hidden is not None:
            raise ValueError(
                "a top-k or hidden-states teacher output has no full scores; use predictions()"
            )
        return self.logits if self.logits is not None else self.probs  # type: ignore[return-value]

    def predictions(self) -> Tensor:
        """``(N,)`` predicted class per sample (the same for logits and for probabilities);
        a language model's ``(N, T)`` predicted token per position."""
        if self.topk_ids is not None:
            return self.topk_ids[..., 0]
        if self.last_hidden is not None:
            return self.predicted if self.predicted is not None else self._hidden_argmax()
        return self.scores.argmax(dim=-1)

    def _hidden_argmax(self, rows_per_chunk: int = 256) -> Tensor:
        """The argmax of ``last_hidden @ head_weight.T``, a few rows of logits at a time."""
        assert self.last_hidden is not None and self.head_weight is not None
        hidden = self.last_hidden.reshape(-1, self.last_hidden.shape[-1])
        with torch.no_grad():
            parts = [
                (hidden[i : i + rows_per_chunk] @ self.head_weight.T).argmax(dim=-1)
                for i in range(0, hidden.shape[0], rows_per_chunk)
            ]
        flat = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.long)
        return flat.view(self.last_hidden.shape[:-1])

    def detach(self) -> TeacherOutput:
        """A copy whose tensors carry no autograd history."""

        def off(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach()

        return TeacherOutput(
            logits=off(self.logits),
            probs=off(self.probs),
            temperature=self.temperature,
            features={k: v.detach() for k, v in self.features.items()},
            topk_ids=off(self.topk_ids),
            topk_logprobs=off(self.topk_logprobs),
            last_hidden=off(self.last_hidden),
            head_weight=off(self.head_weight),
            predicted=self.predicted,
        )


@dataclass(frozen=True)
class LossOutput:
    """The result of an objective.

    Attributes:
        total: scalar tensor to backpropagate; equals ``sum(weights[k] * parts[k])``.
        parts: **unweighted** named terms (e.g. ``"student"``: cross-entropy at T=1,
            ``"distill"``: KL at temperature T without the ``T**2`` factor), so that runs with
            different weights or temperatures stay comparable in logs.
        weights: the multiplier applied to each part to form ``total`` (``"distill"``'s includes
            ``T**2`` when the loss scales by it). Parts without a weight are logged only.
        count: what ``total`` is a mean over when that varies from batch to batch (the kept
            tokens of a language model's batch), as a 0-d tensor; ``None`` for a mean over the
            batch's samples. With a count, the trainer weighs each micro-batch of an optimizer
            step (accumulated, or on other processes) by it, so that a step follows the mean
            over every kept token of the global batch, however it is split.
    """

    total: Tensor
    parts: Mapping[str, Tensor]
    weights: Mapping[str, float] = field(default_factory=dict)
    count: Tensor | None = None

    def weighted_parts(self) -> dict[str, Tensor]:
        """Each weighted part as it enters ``total``."""
        return {k: self.parts[k] * w for k, w in self.weights.items()}

    def detached(self) -> dict[str, Tensor]:
        """Total, unweighted and weighted parts as detached tensors (no host synchronization:
        the trainer sums these on the device and reads them once per logging interval)."""
        out = {"total": self.total.detach()}
        for k, v in self.parts.items():
            out[k] = v.detach()
        for k, v in self.weighted_parts().items():
            out[f"{k}_weighted"] = v.detach()
        return out

    def as_floats(self) -> dict[str, float]:
        """Total, unweighted and weighted parts as Python floats, for logging (each value is a
        host synchronization: in a loop, prefer :meth:`detached`)."""
        return {k: float(v) for k, v in self.detached().items()}


class DistillerOutput(NamedTuple):
    """What an objective (:class:`kdistill.Distiller`, :class:`kdistill.Supervised`) returns for
    a batch: the student's output, the loss, and the teacher's output (``None`` without one)."""

    student: StudentOutput
    loss: LossOutput
    teacher: TeacherOutput | None


@dataclass(frozen=True)
class Batch:
    """One batch, ready for the model.

    Attributes:
        inputs: float32, augmented and normalized, on the training device.
        targets: ``(N,)`` int64 labels.
        sample_ids: ``(N,)`` int64 stable ids of the samples (CPU).
        views: ``(N,)`` int64 augmentation view of each sample, or ``None`` without augmentation.
    """

    inputs: Tensor
    targets: Tensor
    sample_ids: Tensor
    views: Tensor | None


def logits_of(output: object) -> Tensor:
    """Class scores from a model's output: a tensor, the first item of a tuple, or ``["logits"]``
    (also an attribute ``.logits``, as Hugging Face models return)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits  # type: ignore[attr-defined]
    raise ValueError(
        f"cannot find logits in a model output of type {type(output).__name__}: return a "
        "tensor, a tuple whose first item is the logits, or a dict with a 'logits' key"
    )
