"""``CachedTeacher``: a teacher that reads its outputs from the teacher-output cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdistill.cache import TeacherCache, merge_members, topk_to_distribution
from kdistill.types import TeacherOutput


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
        if layout.topk is not None and (
            temperature is None or abs(layout.temperature - temperature) > 1e-9
        ):  # type: ignore[operator]
            raise ValueError(
                f"{cache.path} holds top-{layout.topk} probabilities at temperature {layout.temperature}, "
                f"not {temperature}; top-k caches are tied to one temperature (full caches are not)"
            )
        if layout.members > 1 and reduce == "probs" and temperature is None:
            raise ValueError("merging ensemble members by probability needs temperature=")
        if weights is not None and len(weights) != layout.members:
            raise ValueError(f"{len(weights)} weights for {layout.members} cached teachers")
        self.cache = cache
        self.reduce = reduce
        self.temperature = temperature
        self.register_buffer(
            "weights",
            None if weights is None else torch.tensor(list(weights), dtype=torch.float32),
            persistent=False,
        )

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
        if "topk_values" in found:
            probs = topk_to_distribution(
                found["topk_values"], found["topk_indices"], self.cache.layout.num_classes
            )
            return TeacherOutput(probs=probs.to(device), temperature=self.cache.layout.temperature)
        logits = found["logits"].to(device)  # (B, M, C)
        if logits.shape[1] == 1:
            return TeacherOutput(logits=logits[:, 0])
        if self.reduce == "logits":
            w = self._weights(logits)
            return TeacherOutput(logits=(logits * w.view(1, -1, 1)).sum(dim=1))
        probs = merge_members(logits, "probs", self._weights(logits), self.temperature)  # type: ignore[arg-type]
        return TeacherOutput(probs=probs, temperature=self.temperature)

    def _weights(self, logits: Tensor) -> Tensor:
        m = logits.shape[1]
        if self.weights is None:
            return torch.full((m,), 1.0 / m, device=logits.device)
        return (self.weights / self.weights.sum()).to(logits.device)

    def extra_repr(self) -> str:
        return (
            f"path={str(self.cache.path)!r}, kind={self.cache.layout.kind}, reduce={self.reduce!r}"
        )
