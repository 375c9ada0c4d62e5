"""Distiller's pruners as kdistill pruning policies."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.names import parameter_to_module
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.interop.distiller.values import modules, number, only
from kdistill.policies import PruningPolicy, agp_sparsity

CLASSES = (
    "AutomatedGradualPruner",
    "L1RankedStructureParameterPruner_AGP",
    "L1RankedStructureParameterPruner",
    "SparsityLevelParameterPruner",
    "MagnitudeParameterPruner",
    "SensitivityPruner",
)
# Distiller's group types -> kdistill's structure (for a Linear, rows are its filters).
GROUP_TYPES = {"Filters": "filters", "Rows": "filters", "Channels": "channels", "Cols": "channels"}


def translate(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, args: Mapping[str, Any]
) -> None:
    where, cls = f"{schedule.where}: pruners.{name}", spec["class"]
    if args:
        raise DistillerError(f"{where}: policy args {sorted(args)} are not supported for pruners")
    if cls in ("MagnitudeParameterPruner", "SensitivityPruner"):
        _threshold_pruner(schedule, name, spec, steps, where, cls)
    elif cls == "SparsityLevelParameterPruner":
        _level_pruner(schedule, name, spec, steps, where, cls)
    else:
        _ranked_pruner(schedule, spec, steps, where, cls)


def _level_pruner(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, where: str, cls: str
) -> None:
    only(spec, {"levels"}, where, cls)
    levels = spec.get("levels")
    if not isinstance(levels, dict) or not levels:
        raise DistillerError(f"{where}: levels must map parameter names to sparsities")
    by_level: dict[float, list[str]] = {}
    for param, level in levels.items():
        value = number({"level": level}, "level", f"{where}: levels[{param}]", 0.0, 0.999)
        by_level.setdefault(value, []).append(parameter_to_module(str(param)))
    for level, names in by_level.items():
        if level > 0:
            schedule.policies.append(_one_shot(names, steps.start, level))
    if len(steps.epochs) > 1:
        schedule.note(
            f"pruners.{name}: pruned once at epoch {steps.start}; the masks then stay (later "
            "steps to the same level change nothing)"
        )


def _one_shot(names: list[str], epoch: int, target: float, structure: str = "elements") -> Any:
    return PruningPolicy(
        target_sparsity=target,
        schedule="one_shot",
        scope="per_layer",  # Distiller prunes each tensor to its level
        modules=tuple(names),
        starting_epoch=epoch,
        structure=structure,  # type: ignore[arg-type]
    )


def _ranked_pruner(
    schedule: Schedule, spec: dict[str, Any], steps: Steps, where: str, cls: str
) -> None:
    structure = "elements"
    if cls != "AutomatedGradualPruner":
        group = spec.get("group_type")
        if group not in GROUP_TYPES:
            raise DistillerError(
                f"{where}: group_type {group!r} is not supported; supported: "
                f"{', '.join(GROUP_TYPES)}"
            )
        structure = GROUP_TYPES[group]
    dependency = _group_dependency(spec, where)
    if cls == "L1RankedStructureParameterPruner":  # one-shot
        only(spec, {"desired_sparsity", "group_type", "weights", "group_dependency"}, where, cls)
        target = number(spec, "desired_sparsity", where, 0.0, 0.999)
        policy = _one_shot(modules(spec, where), steps.start, target, structure)
        schedule.policies.append(dataclasses.replace(policy, group_dependency=dependency))
        return
    allowed = {"initial_sparsity", "final_sparsity", "weights"}
    structured = {"group_type", "group_dependency"} if structure != "elements" else set()
    only(spec, allowed | structured, where, cls)
    initial = number(spec, "initial_sparsity", where, 0.0, 0.999)
    final = number(spec, "final_sparsity", where, 0.0, 0.999)
    if initial > final:
        raise DistillerError(f"{where}: initial_sparsity {initial} is above final_sparsity {final}")
    # Distiller's AGP reaches final_sparsity at its last step: start + span, with
    # span = ((end - start - 1) // frequency) * frequency.
    span = ((steps.end - steps.start - 1) // steps.frequency) * steps.frequency
    if span <= 0:
        raise DistillerError(
            f"{where}: AGP needs at least two pruning steps between starting_epoch "
            f"{steps.start} and ending_epoch {steps.end} (every {steps.frequency} epochs), as in "
            "Distiller"
        )
    policy = PruningPolicy(
        target_sparsity=final,
        initial_sparsity=initial,
        schedule="agp",
        scope="per_layer",
        modules=tuple(modules(spec, where)),
        starting_epoch=steps.start,
        ending_epoch=steps.start + span + 1,
        frequency=steps.frequency,
        structure=structure,  # type: ignore[arg-type]
        group_dependency=dependency,  # type: ignore[arg-type]
    )
    last = policy.last_step
    assert last is not None
    if last >= schedule.epochs:
        in_run = [e for e in range(steps.start, last + 1, steps.frequency) if e < schedule.epochs]
        reached = agp_sparsity(in_run[-1], initial=initial, final=final, start=steps.start,
                               span=span)  # fmt: skip
        schedule.note(
            f"{where.split(': ', 1)[1]}: AGP's last step (epoch {last}) is not before --epochs "
            f"{schedule.epochs}; as in Distiller it is cut off at the run's end, reaching "
            f"{reached:.1%} sparsity at epoch {in_run[-1]} instead of {final:.1%}"
        )
    schedule.policies.append(policy)


def _group_dependency(spec: Mapping[str, Any], where: str) -> str:
    value = spec.get("group_dependency")
    if value is None:
        return "independent"
    if value != "Leader":
        raise DistillerError(
            f"{where}: group_dependency {value!r}; Distiller's is Leader (or none)"
        )
    return "leader"


def _threshold_pruner(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, where: str, cls: str
) -> None:
    """Magnitude (absolute thresholds) and sensitivity (thresholds in standard deviations of
    each weight) pruners: one policy per threshold; ``'*'`` covers the layers not named."""
    key = "thresholds" if cls == "MagnitudeParameterPruner" else "sensitivities"
    only(spec, {key}, where, cls)
    table = spec.get(key)
    if not isinstance(table, dict) or not table:
        raise DistillerError(f"{where}: {key} must map parameter names (or '*') to numbers")
    named = {parameter_to_module(str(k)): v for k, v in table.items() if k != "*"}
    groups: dict[float, list[str]] = {}
    for module, value in named.items():
        t = number({key: value}, key, f"{where}: {key}[{module}]", 0.0, math.inf)
        groups.setdefault(t, []).append(module)
    chosen = list(groups.items())
    if "*" in table:
        t = number({key: table["*"]}, key, f"{where}: {key}['*']", 0.0, math.inf)
        others = ["re:(?!(?:" + "|".join(re.escape(m) for m in named) + ")$).*"] if named else []
        chosen.append((t, others))
        schedule.note(
            f"pruners.{name}: '*' covers the Conv2d and Linear weights not named; Distiller "
            "also thresholds biases and BatchNorm weights, which kdistill does not prune"
        )
    for t, names in chosen:
        if t == 0:
            continue
        schedule.policies.append(
            PruningPolicy(
                schedule="threshold",
                threshold=t,
                threshold_in_std=cls == "SensitivityPruner",
                scope="per_layer",
                modules=tuple(names),
                starting_epoch=steps.start,
                ending_epoch=schedule.end_in_run(steps.end),
                frequency=steps.frequency,
            )
        )
