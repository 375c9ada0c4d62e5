"""Choosing layers by name or pattern: ``features.0`` (exact) or ``re:classifier\\..*`` (regex)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)  # the layers compression acts on


def matches(name: str, pattern: str) -> bool:
    """Whether a module name matches an exact name or a ``re:`` regular expression (full match)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the layers with a 2-D (Linear) or 4-D (Conv2d) ``weight``, found through the
    parameters so that exported graphs (quantization-aware training), which keep parameter names
    but not submodules, are covered too."""
    return [
        n[: -len(".weight")]
        for n, p in model.named_parameters()
        if n.endswith(".weight") and p.dim() in (2, 4)
    ]


def select_layers(model: nn.Module, patterns: Sequence[str], what: str = "layers") -> list[str]:
    """Names of the Conv2d/Linear layers chosen by ``patterns`` (all of them when empty).

    Raises:
        ValueError: a pattern that matches no such layer (naming the candidates).
    """
    candidates = weight_layers(model)
    if not patterns:
        return candidates
    chosen = []
    for pattern in patterns:
        hits = [n for n in candidates if matches(n, pattern)]
        if not hits:
            raise ValueError(
                f"{what}: {pattern!r} matches no Conv2d/Linear module; candidates: {', '.join(candidates)}"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def first_and_last(model: nn.Module) -> list[str]:
    """The first and the last Conv2d/Linear (the layers compression usually leaves alone)."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    return [names[0], names[-1]] if len(names) > 1 else names
