"""Distiller's thinning extensions (``StructureRemover`` and its aliases ``FilterRemover`` and
``ChannelRemover``) as kdistill's thinning policies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.interop.distiller.values import only
from kdistill.policies import ThinningPolicy

# Distiller's thinning.py: FilterRemover = ChannelRemover = StructureRemover; what is removed
# is its thinning_func_str's choice, whatever the class is called.
CLASSES = ("StructureRemover", "FilterRemover", "ChannelRemover")
FUNCTIONS = {"remove_filters": "filters", "remove_channels": "channels"}
_DEFAULT_FUNCTION = {"FilterRemover": "remove_filters", "ChannelRemover": "remove_channels"}


def translate(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, args: Mapping[str, Any]
) -> None:
    where, cls = f"{schedule.where}: extensions.{name}", spec["class"]
    only(spec, {"thinning_func_str", "arch", "dataset"}, where, cls)
    if args:
        raise DistillerError(f"{where}: policy args {sorted(args)} are not supported for {cls}")
    func = spec.get("thinning_func_str", _DEFAULT_FUNCTION.get(cls))
    if func not in FUNCTIONS:
        raise DistillerError(
            f"{where}: thinning_func_str {func!r}; Distiller's thinning functions are "
            f"{', '.join(FUNCTIONS)}"
        )
    epochs = [e for e in steps.epochs if e < schedule.epochs]
    late = [e for e in steps.epochs if e >= schedule.epochs]
    if late:
        schedule.note(
            f"extensions.{name}: thinning at epoch(s) {late} is not before --epochs "
            f"{schedule.epochs}: it never happens in this run"
        )
    schedule.thinning.setdefault(FUNCTIONS[func], []).extend(epochs)


def attach(schedule: Schedule) -> None:
    """One thinning policy per structure, with every epoch the schedule thins it at. Like
    Distiller's thinner it removes the all-zero filters (channels) of every convolution,
    whichever pruner or regularizer zeroed them; Linear rows pruned before or after stay masked
    (Distiller thins 4-D weights only)."""
    for structure, epochs in schedule.thinning.items():
        if epochs:
            schedule.policies.append(
                ThinningPolicy(structure=structure, epochs=tuple(sorted(set(epochs))))  # type: ignore[arg-type]
            )
