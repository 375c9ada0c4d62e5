"""Distiller's learning-rate schedulers as kdistill's per-step schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.interop.distiller.values import number, only

CLASSES = ("StepLR", "MultiStepLR", "ExponentialLR", "MultiStepMultiGammaLR")


def translate(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, args: Mapping[str, Any]
) -> None:
    where, cls = f"{schedule.where}: lr_schedulers.{name}", spec["class"]
    if schedule.lr is not None:
        raise DistillerError(
            f"{where}: a second learning-rate scheduler; kdistill runs one schedule"
        )
    if args:
        raise DistillerError(
            f"{where}: policy args {sorted(args)} are not supported for lr schedulers"
        )
    factor = _lr_closed_form(cls, spec, where)
    schedule.lr = _as_schedule(_epoch_factors(factor, steps, schedule.epochs))


def _lr_closed_form(cls: str, spec: Mapping[str, Any], where: str) -> Any:
    """``epoch -> lr factor`` of a torch scheduler stepped with an explicit epoch, as
    Distiller's LRPolicy steps it."""
    if cls == "StepLR":
        only(spec, {"step_size", "gamma"}, where, cls)
        size = spec.get("step_size")
        if not isinstance(size, int) or size < 1:
            raise DistillerError(f"{where}: step_size must be an integer >= 1, got {size!r}")
        gamma = number(spec, "gamma", where, 0.0, 1.0) if "gamma" in spec else 0.1
        return lambda e: gamma ** (e // size)
    if cls == "ExponentialLR":
        only(spec, {"gamma"}, where, cls)
        gamma = number(spec, "gamma", where, 0.0, 1.0)
        return lambda e: gamma**e
    milestones = spec.get("milestones")
    if not isinstance(milestones, list) or not all(isinstance(m, int) for m in milestones):
        raise DistillerError(f"{where}: milestones must list epochs, got {milestones!r}")
    if cls == "MultiStepLR":
        only(spec, {"milestones", "gamma"}, where, cls)
        gamma = number(spec, "gamma", where, 0.0, 1.0) if "gamma" in spec else 0.1
        gammas = [gamma] * len(milestones)
    else:
        only(spec, {"milestones", "gammas"}, where, cls)
        gammas = spec.get("gammas")
        if not isinstance(gammas, list) or len(gammas) != len(milestones):
            raise DistillerError(
                f"{where}: gammas must give one factor per milestone, got {gammas!r}"
            )
        gammas = [number({"gamma": g}, "gamma", where, 0.0, math.inf) for g in gammas]
    return lambda e: math.prod(g for m, g in zip(milestones, gammas) if e >= m)


def _epoch_factors(factor: Any, steps: Steps, epochs: int) -> list[float]:
    """The lr factor of every epoch: Distiller steps the scheduler at the end of each epoch of
    the policy (with the next epoch's number), so epoch ``e`` runs at ``factor(s + 1)`` for the
    last stepped epoch ``s < e``, and at the initial lr before the first step."""
    stepped = [s for s in steps.epochs if s < epochs]
    out = []
    for e in range(epochs):
        done = [s for s in stepped if s < e]
        out.append(float(factor(done[-1] + 1)) if done else 1.0)
    return out


def _as_schedule(factors: list[float]) -> dict[str, Any]:
    """kdistill's schedule for per-epoch lr factors: exponential or multistep where those fit
    exactly, else multistep with one factor per change (Distiller's MultiStepMultiGammaLR)."""
    changes = [e for e in range(1, len(factors)) if not math.isclose(factors[e], factors[e - 1])]
    if not changes:
        return {"name": "constant"}
    ratios = [factors[e] / factors[e - 1] for e in changes]
    every_epoch = changes == list(range(1, len(factors)))
    if every_epoch and all(math.isclose(r, ratios[0]) for r in ratios):
        return {"name": "exponential", "gamma": ratios[0]}  # factor(e) = gamma^e
    schedule: dict[str, Any] = {"name": "multistep", "milestones": changes}
    if all(math.isclose(r, ratios[0]) for r in ratios):
        schedule["gamma"] = ratios[0]
    else:
        schedule["gammas"] = ratios
    return schedule
