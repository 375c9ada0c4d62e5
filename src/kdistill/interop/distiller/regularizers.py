"""Distiller's regularizers as kdistill regularization policies."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from kdistill.interop.distiller.errors import DistillerError
from kdistill.interop.distiller.names import parameter_to_module
from kdistill.interop.distiller.pruners import GROUP_TYPES
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.interop.distiller.values import number, only
from kdistill.policies import RegularizationPolicy

CLASSES = ("L1Regularizer", "GroupLassoRegularizer")
# Distiller's threshold_criteria -> kdistill's (GroupLassoRegularizer accepts these two).
CRITERIA = {"Mean_Abs": "mean_abs", "Max": "max"}


def translate(
    schedule: Schedule, name: str, spec: dict[str, Any], steps: Steps, args: Mapping[str, Any]
) -> None:
    where, cls = f"{schedule.where}: regularizers.{name}", spec["class"]
    only(spec, {"reg_regims", "threshold_criteria"}, where, cls)
    unknown_args = sorted(set(args) - {"keep_mask"})
    if unknown_args:
        raise DistillerError(
            f"{where}: policy args {unknown_args} are not supported; supported: keep_mask"
        )
    criteria = spec.get("threshold_criteria")
    if criteria is not None and criteria not in CRITERIA:
        raise DistillerError(
            f"{where}: threshold_criteria {criteria!r}; Distiller's regularizers take "
            f"{', '.join(CRITERIA)} (or none)"
        )
    keep_mask = bool(args.get("keep_mask", False))
    if keep_mask and criteria is None:
        schedule.note(
            f"regularizers.{name}: keep_mask has no effect without threshold_criteria (as in "
            "Distiller: there is no mask to keep)"
        )
        keep_mask = False
    regims = spec.get("reg_regims")
    if not isinstance(regims, dict) or not regims:
        raise DistillerError(f"{where}: reg_regims must map parameter names to strengths")
    groups: dict[tuple[float, str], list[str]] = {}
    for param, regim in regims.items():
        pwhere = f"{where}: reg_regims[{param}]"
        if cls == "L1Regularizer":
            strength, group = regim, "l1"
        else:
            if not (isinstance(regim, list) and len(regim) == 2):
                raise DistillerError(f"{pwhere}: expected [strength, group type], got {regim!r}")
            strength, group_type = regim
            if group_type not in GROUP_TYPES:
                raise DistillerError(
                    f"{pwhere}: group type {group_type!r} is not supported; supported: "
                    f"{', '.join(GROUP_TYPES)}"
                )
            group = GROUP_TYPES[group_type]
        value = number({"strength": strength}, "strength", pwhere, 0.0, math.inf)
        groups.setdefault((value, group), []).append(parameter_to_module(str(param)))
    if steps.frequency != 1:
        schedule.note(
            f"regularizers.{name}: frequency {steps.frequency} ignored: the penalty applies in "
            "every epoch of its window"
        )
    for (strength, group), names in groups.items():
        if strength == 0:
            continue
        schedule.policies.append(
            RegularizationPolicy(
                type="l1" if group == "l1" else "group_lasso",
                weight=strength,
                groups="channels" if group == "channels" else "filters",
                modules=tuple(names),
                starting_epoch=steps.start,
                ending_epoch=schedule.end_in_run(steps.end),
                # Distiller thresholds at the strength itself (group_threshold_mask(param,
                # group_type, strength, criteria)), after every minibatch of the window
                threshold=strength if criteria is not None else None,
                threshold_criteria=CRITERIA.get(criteria, "mean_abs"),  # type: ignore[arg-type]
                keep_mask=keep_mask,
            )
        )


def scale_by_student_weight(schedule: Schedule) -> None:
    """Distiller adds the distillation policy after the schedule's, and each policy receives
    the loss so far: while distilling, the loss is ``sw * (CE + penalties) + dw * KL``. kdistill
    adds penalties to the weighted total, so their strengths are multiplied by ``sw`` in the
    distillation epochs (a policy that spans the start is split there). Thresholds stay: they
    compare weights, not losses."""
    kd = schedule.out.config.get("kd")
    if kd is None or kd["alpha"] == 1.0:
        return
    alpha, start = kd["alpha"], kd["start_epoch"]
    scaled: list[Any] = []
    for p in schedule.policies:
        if not isinstance(p, RegularizationPolicy):
            scaled.append(p)
            continue
        end = schedule.epochs if p.ending_epoch is None else p.ending_epoch
        if p.starting_epoch < start < end:  # labels only, then distillation
            scaled.append(dataclasses.replace(p, ending_epoch=start, keep_mask=False))
            p = dataclasses.replace(p, starting_epoch=start)
        if p.starting_epoch >= start and alpha > 0:
            p = dataclasses.replace(p, weight=p.weight * alpha)
        if p.starting_epoch < start or alpha > 0:
            scaled.append(p)
    if any(isinstance(p, RegularizationPolicy) for p in scaled):
        schedule.note(
            f"regularizers: strengths multiplied by --kd-sw {alpha} while distilling, as "
            "Distiller's loss is sw * (CE + penalties) + dw * KL; kdistill adds penalties to "
            "the weighted total"
        )
    schedule.policies = scaled
