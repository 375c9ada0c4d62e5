"""Checks of a schedule entry's settings, each error naming the entry and what is valid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.names import parameter_to_module


def number(spec: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise DistillerError(f"{where}: {key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def only(spec: Mapping[str, Any], allowed: set[str], where: str, cls: str) -> None:
    unknown = sorted(set(spec) - allowed - {"class"})
    if unknown:
        raise DistillerError(
            f"{where}: {cls} setting(s) {', '.join(unknown)} are not supported; supported: "
            f"{', '.join(sorted(allowed))}"
        )


def modules(spec: Mapping[str, Any], where: str) -> list[str]:
    """The modules whose ``weights`` an entry lists (parameter names -> module names)."""
    weights = spec.get("weights")
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, list) or not weights or not all(isinstance(w, str) for w in weights):
        raise DistillerError(f"{where}: weights must list parameter names, got {weights!r}")
    return [parameter_to_module(w) for w in weights]
