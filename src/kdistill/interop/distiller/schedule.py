"""A Distiller YAML compression schedule: its instances, its policies and their epochs.

Each policy of the schedule names an instance of a section (pruner, regularizer, quantizer,
lr_scheduler, extension) and the epochs it acts in; the section's module turns it into
kdistill's typed policies (:mod:`kdistill.policies`). Distiller runs a schedule longer than
``--epochs`` as far as the run goes: a policy that would start after the run never acts (a note
says so), and one that would end after it is cut off.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from kdistill.config.errors import ConfigError
from kdistill.interop.distiller import lr, pruners, quantizers, regularizers, thinning
from kdistill.interop.distiller.errors import DistillerError, Translation
from kdistill.interop.distiller.steps import Schedule, Steps
from kdistill.validation import EpochWindow

SECTIONS: dict[str, tuple[str, ...]] = {
    "pruners": pruners.CLASSES,
    "regularizers": regularizers.CLASSES,
    "quantizers": quantizers.CLASSES,
    "lr_schedulers": lr.CLASSES,
    "extensions": thinning.CLASSES,
}
# A schedule policy's key -> the section its instance is defined in.
POLICY_KINDS = {"pruner": "pruners", "regularizer": "regularizers", "quantizer": "quantizers",
                "lr_scheduler": "lr_schedulers", "extension": "extensions"}  # fmt: skip


Section = Callable[[Schedule, str, dict[str, Any], Steps, Mapping[str, Any]], None]
HANDLERS: dict[str, Section] = {
    "pruners": pruners.translate,
    "regularizers": regularizers.translate,
    "quantizers": quantizers.translate,
    "lr_schedulers": lr.translate,
    "extensions": thinning.translate,
}


def _check_class(where: str, section: str, cls: Any) -> None:
    """A schedule entry's class must be one kdistill runs; the error names what it runs."""
    if section == "quantizers" and cls in quantizers.REFUSED:
        raise DistillerError(
            f"{where}: {cls} ({quantizers.REFUSED[cls]}) is not implemented in kdistill, which "
            "trains range-linear quantization: use QuantAwareTrainRangeLinearQuantizer "
            "with the same bits_weights / bits_activations"
        )
    if cls not in SECTIONS[section]:
        what = section[:-1].replace("_", " ")
        raise DistillerError(
            f"{where}: {what} class {cls} is not supported; supported: "
            f"{', '.join(SECTIONS[section])}"
        )


def _read(path: str, where: str, out: Translation) -> dict[str, Any]:
    """The schedule's YAML (values only); a key written twice keeps its last value, as
    Distiller's loader does, with a note naming it."""
    from kdistill.config.loader import read_yaml

    duplicates: list[tuple[Any, int, int]] = []
    try:
        doc = read_yaml(path, duplicates)
    except ConfigError as e:
        raise DistillerError(f"--compress: {e}") from None
    for key, first, later in duplicates:
        out.notes.append(
            f"{where}: the key {key!r} is written twice (lines {first} and {later}); the "
            f"value of line {later} is used, as Distiller's YAML loader does"
        )
    return doc


def translate_schedule(path: str, out: Translation, *, epochs: int) -> None:
    """Add the policies and learning-rate schedule of Distiller's YAML schedule at ``path``."""
    where = f"--compress {path}"
    doc = _read(path, where, out)
    known = {"version", "policies", *SECTIONS}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise DistillerError(
            f"{where}: unknown section(s) {', '.join(unknown)}; a Distiller schedule holds "
            f"{', '.join(sorted(known))}"
        )
    if doc.get("version", 1) != 1:
        raise DistillerError(
            f"{where}: version {doc['version']!r}; Distiller schedules are version 1"
        )
    instances = _instances(doc, where)
    policies = doc.get("policies") or []
    if not isinstance(policies, list):
        raise DistillerError(f"{where}: policies must be a list")
    schedule = Schedule(where, epochs, out)
    used: set[str] = set()
    for i, policy in enumerate(policies):
        name, section, spec, ref = _policy_instance(policy, i, instances, where)
        used.add(name)
        steps = _steps(policy, f"{where}: policies[{i}] ({name})")
        if steps.start >= epochs:
            schedule.note(
                f"policies[{i}] ({section[:-1].replace('_', ' ')} {name}) starts at epoch "
                f"{steps.start}, not before --epochs {epochs}: it never acts in this run (as in "
                "Distiller, which runs the schedule as far as the run goes)"
            )
            continue
        args = ref.get("args") or {}
        if not isinstance(args, Mapping):
            raise DistillerError(f"{where}: policies[{i}] args must be a mapping, got {args!r}")
        HANDLERS[section](schedule, name, spec, steps, args)
    for name, (section, _) in instances.items():
        if name not in used:
            out.notes.append(f"{section}.{name} is defined but no policy uses it (as in Distiller)")
    thinning.attach(schedule)
    regularizers.scale_by_student_weight(schedule)
    if schedule.policies:
        out.config["policies"] = [policy_data(p) for p in schedule.policies]
    if schedule.lr is not None:
        out.config["schedule"] = schedule.lr


def _instances(doc: Mapping[str, Any], where: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{instance name: (section, settings)}``, every class checked."""
    instances: dict[str, tuple[str, dict[str, Any]]] = {}
    for section in SECTIONS:
        entries = doc.get(section) or {}
        if not isinstance(entries, dict):
            raise DistillerError(f"{where}: {section} must map instance names to their settings")
        for name, spec in entries.items():
            if not isinstance(spec, dict) or "class" not in spec:
                raise DistillerError(f"{where}: {section}.{name} needs a class")
            if str(name) in instances:
                raise DistillerError(
                    f"{where}: the name {name!r} is defined in {instances[str(name)][0]} and in "
                    f"{section}; policies refer to instances by name, so give each its own"
                )
            _check_class(f"{where}: {section}.{name}", section, spec["class"])
            instances[str(name)] = (section, dict(spec))
    return instances


def _policy_instance(
    policy: Any, i: int, instances: Mapping[str, tuple[str, dict[str, Any]]], where: str
) -> tuple[str, str, dict[str, Any], Mapping[str, Any]]:
    """The instance a schedule policy names: ``(name, section, settings, reference)``."""
    if not isinstance(policy, dict):
        raise DistillerError(f"{where}: policies[{i}] must be a mapping")
    kind = [k for k in POLICY_KINDS if k in policy]
    if len(kind) != 1:
        raise DistillerError(
            f"{where}: policies[{i}] must name exactly one of {', '.join(POLICY_KINDS)}, got "
            f"{', '.join(kind) or 'none'}"
        )
    ref = policy[kind[0]]
    name = ref.get("instance_name") if isinstance(ref, dict) else None
    section = POLICY_KINDS[kind[0]]
    if name not in instances or instances[name][0] != section:
        defined = [n for n, (s, _) in instances.items() if s == section]
        raise DistillerError(
            f"{where}: policies[{i}] refers to {kind[0]} {name!r}, which {section} does not "
            f"define (defined: {', '.join(defined) or 'none'})"
        )
    unknown = sorted(set(policy) - {kind[0], "starting_epoch", "ending_epoch", "frequency",
                                    "epochs"})  # fmt: skip
    if unknown:
        raise DistillerError(f"{where}: policies[{i}] has unknown key(s) {', '.join(unknown)}")
    return name, section, instances[name][1], ref


def _steps(policy: Mapping[str, Any], where: str) -> Steps:
    if "epochs" in policy:
        listed = policy["epochs"]
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in listed)
        ):
            raise DistillerError(f"{where}: epochs must be a list of epoch numbers, got {listed!r}")
        steps = sorted(set(listed))
        gaps = {b - a for a, b in itertools.pairwise(steps)}
        if len(gaps) > 1:
            raise DistillerError(
                f"{where}: epochs {listed} are not evenly spaced; kdistill policies act every "
                "`frequency` epochs from starting_epoch (write starting_epoch / ending_epoch / "
                "frequency)"
            )
        return Steps(EpochWindow(steps[0], steps[-1] + 1), gaps.pop() if gaps else 1)
    for key in ("starting_epoch", "ending_epoch"):
        if not isinstance(policy.get(key), int) or isinstance(policy.get(key), bool):
            raise DistillerError(f"{where}: needs {key} (an epoch number) or an epochs list")
    start, end = policy["starting_epoch"], policy["ending_epoch"]
    frequency = policy.get("frequency", 1)
    if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
        raise DistillerError(f"{where}: frequency must be an integer >= 1, got {frequency!r}")
    if not 0 <= start < end:
        raise DistillerError(
            f"{where}: starting_epoch {start} must be >= 0 and before ending_epoch {end}"
        )
    return Steps(EpochWindow(start, end), frequency)


def policy_data(policy: Any) -> dict[str, Any]:
    """A typed policy as config data: its kind and the settings that differ from the policy's
    defaults (what the printed config shows)."""
    data: dict[str, Any] = {"kind": policy.kind}
    for f in dataclasses.fields(policy):
        value = getattr(policy, f.name)
        if f.name != "kind" and value != f.default:
            data[f.name] = list(value) if isinstance(value, tuple) else value
    return data
