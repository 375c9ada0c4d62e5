"""``CachedTeacher``: a teacher that reads its outputs from the teacher-output cache."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdistill.cache import TeacherCache, topk_to_distribution
from kdistill.losses.ensemble import merge_members
from kdistill.types import TeacherOutput
from kdistill.validation import (
    ENSEMBLE_REDUCES,
    check_choice,
    merge_temperature,
    normalized_weights,
    same_temperature,
)


class CachedTeacher(nn.Module):
    """Looks up the stored outputs for each ``(sample id, augmentation view)`` of a batch.

    The inputs themselves are not used: the cache was computed on exactly these views, and the
    data pipeline only draws views the cache holds (:meth:`TeacherCache.view_sampler`).

    Args:
        cache: an open, finished :class:`TeacherCache`.
        reduce, weights: how several stored members merge (as :class:`EnsembleTeacher`).
        temperature: the distillation temperature; needed to merge members by probability.
            Top-k caches hold probabilities at their own temperature, which must equal it.
    """

    is_teacher = True

    def __init__(
        self,
        cache: TeacherCache,
        *,
        reduce: str = "probs",
        weights: Sequence[float] | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        layout = cache.layout
        # a single member needs no merge, so only an ensemble's cache needs the temperature
        temperature = merge_temperature(
            reduce if layout.members > 1 else "logits", temperature, "CachedTeacher"
        )
        check_choice("reduce", reduce, ENSEMBLE_REDUCES)
        if layout.topk is not None and (
            temperature is None or not same_temperature(layout.temperature, temperature)  # type: ignore[arg-type]
        ):
            raise ValueError(
                f"{cache.path} holds top-{layout.topk} probabilities at temperature {layout.temperature}, "
                f"not {temperature}; top-k caches are tied to one temperature (full caches are not)"
            )
        self.cache = cache
        self.reduce = reduce
        self.temperature = temperature
        self.weights = normalized_weights(weights, layout.members, "cached teacher weights")

    def train(self, mode: bool = True) -> CachedTeacher:
        return super().train(False)

    def forward(
        self,
        inputs: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> TeacherOutput:
        if sample_ids is None:
            raise ValueError(
                "a cached teacher needs the batch's sample_ids (and views) to look outputs up"
            )
        found = self.cache.lookup(sample_ids, views)
        device = inputs.device
        if "token_ids" in found:  # a language model's top-k tokens at every position
            return TeacherOutput(
                topk_ids=found["token_ids"].to(device),
                topk_logprobs=found["token_logprobs"].to(device),
                temperature=self.cache.layout.temperature,
            )
        if "topk_values" in found:
            probs = topk_to_distribution(
                found["topk_values"], found["topk_indices"], self.cache.layout.num_classes
            )
            return TeacherOutput(probs=probs.to(device), temperature=self.cache.layout.temperature)
        logits = found["logits"].to(device)  # (B, M, C)
        if logits.shape[1] == 1:  # one teacher's logits: the loss applies any temperature
            return TeacherOutput(logits=logits[:, 0])
        return merge_members(logits, self.weights, self.reduce, self.temperature)

    def extra_repr(self) -> str:
        return (
            f"path={str(self.cache.path)!r}, kind={self.cache.layout.kind}, reduce={self.reduce!r}"
        )
