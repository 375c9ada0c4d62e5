"""Distiller's command line and YAML compression schedules, translated into a kdistill config.

Distiller (Intel Labs, no longer maintained) drives distillation, pruning and quantization-aware
training from ``compress_classifier.py``'s flags and a YAML schedule. :func:`translate` turns
both into the plain data of a kdistill run config (only the keys that differ from kdistill's
defaults, ready to print as YAML) plus notes on what was mapped approximately or ignored.
Everything that cannot be mapped is a :class:`DistillerError` naming it and what is supported:
nothing is skipped silently. Torch-free: the model registry, the data and the schedule's
layer names are checked when the run is assembled.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.config.errors import ConfigError


class DistillerError(ConfigError):
    """A Distiller flag, schedule entry or value that kdistill cannot run as Distiller would."""


# Distiller's defaults for the flags kdistill maps (compress_classifier.py's parser and
# knowledge_distillation.add_distillation_args), so an omitted flag means what it meant there.
DISTILLER_DEFAULTS: dict[str, Any] = {
    "arch": "resnet18",
    "workers": 4,
    "epochs": 90,
    "batch_size": 256,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "print_freq": 10,
    "validation_split": 0.1,
    "seed": None,
    "deterministic": False,
    "out_dir": "logs",
    "name": None,
    "kd_temperature": 1.0,
    "kd_distill_wt": 0.5,
    "kd_student_wt": 0.5,
    "kd_teacher_wt": 0.0,
    "kd_start_epoch": 0,
}

# Distiller's CIFAR models that kdistill's registry builds with the same structure and
# parameter names; kdistill's other registry names pass through unchanged.
KDISTILL_ARCHS = frozenset(
    {
        "mlp", "lenet5", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
        *(f"resnet{d}_cifar" for d in (8, 14, 20, 32, 44, 56, 110)),
        *(f"preact_resnet{d}_cifar" for d in (20, 32, 44, 56, 110)),
    }
)  # fmt: skip
# Distiller's own models that kdistill does not have (its other names are torchvision's).
_DISTILLER_ONLY = re.compile(
    r"(.*_cifar\d*|.*_mnist|.*_conv_ds|mobilenet(_\d+)?|alexnet_bn|preact_resnet\d+|"
    r"resnet\d+_earlyexit|plain\d+.*|vgg\d+_bn_cifar)"
)

# What each schedule section may hold, by Distiller class (key -> meaning in kdistill).
PRUNERS = (
    "AutomatedGradualPruner",
    "L1RankedStructureParameterPruner_AGP",
    "L1RankedStructureParameterPruner",
    "SparsityLevelParameterPruner",
    "MagnitudeParameterPruner",
    "SensitivityPruner",
)
REGULARIZERS = ("L1Regularizer", "GroupLassoRegularizer")
QUANTIZERS = ("QuantAwareTrainRangeLinearQuantizer", "QuantAwareTrainRangeLinearQuantization")
# kdistill's first spelling of Distiller's class, kept so that schedules written for it still load.
_OLD_QUANTIZER_SPELLING = "QuantAwareTrainRangeLinearQuantization"
LR_SCHEDULERS = ("StepLR", "MultiStepLR", "ExponentialLR", "MultiStepMultiGammaLR")
EXTENSIONS = ("FilterRemover", "ChannelRemover")

# Distiller's group types -> kdistill's structure (for a Linear, rows are its filters).
GROUP_TYPES = {"Filters": "filters", "Rows": "filters", "Channels": "channels", "Cols": "channels"}
_REFUSED_QUANTIZERS = {
    "DorefaQuantizer": "DoReFa (tanh-normalized weights, clipped activations)",
    "PACTQuantizer": "PACT (learned activation clipping)",
    "WRPNQuantizer": "WRPN (wide reduced-precision networks)",
    "PostTrainLinearQuantizer": "post-training quantization",
}


SUPPORTED = {
    "pruners": PRUNERS,
    "regularizers": REGULARIZERS,
    "quantizers": QUANTIZERS,
    "lr_schedulers": LR_SCHEDULERS,
    "extensions": EXTENSIONS,
}


def _check_class(where: str, section: str, cls: str) -> None:
    """A schedule entry's class must be one kdistill runs; the error names what it runs."""
    if section == "quantizers" and cls in _REFUSED_QUANTIZERS:
        raise DistillerError(
            f"{where}: {cls} ({_REFUSED_QUANTIZERS[cls]}) is not implemented in kdistill, which "
            "trains range-linear quantization: use QuantAwareTrainRangeLinearQuantizer "
            "with the same bits_weights / bits_activations"
        )
    if cls not in SUPPORTED[section]:
        what = section[:-1].replace("_", " ")
        raise DistillerError(
            f"{where}: {what} class {cls} is not supported; supported: "
            f"{', '.join(SUPPORTED[section])}"
        )


@dataclass
class Translation:
    """A kdistill config (only the keys that differ from kdistill's defaults) and notes."""

    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- names


def map_arch(name: str, flag: str = "--arch") -> str:
    """Distiller's model name as kdistill's: the same name for the CIFAR ResNets (and kdistill's
    other registry names), ``torchvision:<name>`` for the ImageNet models Distiller takes from
    torchvision; Distiller's own other models are an error."""
    name = name.strip().lower()  # Distiller lower-cases -a
    if name in KDISTILL_ARCHS or ":" in name:
        return name
    if _DISTILLER_ONLY.fullmatch(name) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        cifar = ", ".join(sorted(a for a in KDISTILL_ARCHS if a.endswith("_cifar")))
        raise DistillerError(
            f"{flag} {name}: kdistill has no counterpart of this Distiller model. Supported: "
            f"{cifar}; torchvision's ImageNet models by name (resnet18, mobilenet_v2, vgg16, "
            "...); kdistill's own (kdistill models); or an import path package.module:builder"
        )
    return f"torchvision:{name}"


def parameter_to_module(name: str) -> str:
    """``module.layer1.0.conv1.weight`` -> ``layer1.0.conv1`` (DataParallel's prefix and the
    tensor's name dropped: kdistill's policies name modules). Distiller wraps only the
    ``features`` of AlexNet and VGG in DataParallel, so ``features.module.0.weight`` ->
    ``features.0`` too."""
    name = name.strip()
    name = name.removeprefix("module.").replace(".module.", ".")
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def override_key(name: str) -> str:
    """A Distiller override key (a module name or a regular expression) as kdistill's."""
    name = name.removeprefix("module.")
    return f"re:{name}" if re.search(r"[*+?\[\]()|^$\\]", name) else name


# ----------------------------------------------------------------------------- data


def infer_dataset(data_dir: str, arch: str) -> dict[str, Any]:
    """The ``data`` section for Distiller's positional dataset directory, from what the
    directory holds (checked against the architecture, as Distiller infers the dataset from
    its name: ``*cifar*`` -> CIFAR, ``*mnist*`` -> MNIST, else ImageNet)."""
    if data_dir in ("digits", "fashion-mnist"):  # kdistill's own datasets, by name
        return {"name": data_dir}
    base = Path(data_dir)
    if not base.is_dir():
        raise DistillerError(
            f"dataset directory {data_dir!r} does not exist (Distiller's first argument: the "
            "directory of CIFAR-10/100 python batches, MNIST IDX files, or an ImageNet-style "
            "folder with train/ and val/; or digits / fashion-mnist)"
        )

    def has(*names: str) -> bool:
        return any((base / n).exists() for n in names)

    if has("cifar-10-batches-py", "data_batch_1"):
        data = {"name": "cifar10", "root": data_dir, "augment": _CIFAR_AUGMENT}
    elif has("cifar-100-python") or ((base / "train").is_file() and has("meta")):
        data = {"name": "cifar100", "root": data_dir, "augment": _CIFAR_AUGMENT}
    elif has("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "MNIST"):
        data = {"name": "mnist", "root": data_dir}
    elif (base / "train").is_dir():
        data = {"name": "imagefolder", "root": data_dir, "image_size": 224,
                "augment": {"hflip": True}}  # fmt: skip
    else:
        raise DistillerError(
            f"{data_dir}: no dataset found (expected cifar-10-batches-py/ or data_batch_1..5, "
            "cifar-100-python/, MNIST's train-images-idx3-ubyte, or train/ and val/ class folders)"
        )
    expected = "cifar" if "cifar" in arch else "mnist" if "mnist" in arch else None
    if expected is not None and not data["name"].startswith(expected):
        raise DistillerError(
            f"--arch {arch} is a {expected.upper()} model (Distiller infers the dataset from its "
            f"name) but {data_dir} holds {data['name']}"
        )
    return data


# Distiller's CIFAR training transforms: RandomCrop(32, padding=4) and RandomHorizontalFlip.
_CIFAR_AUGMENT = {"crop_padding": 4, "hflip": True}


# ----------------------------------------------------------------------------- flags


def translate_flags(args: Mapping[str, Any], schedule_file: str | None = None) -> Translation:
    """The config for Distiller flags given as ``{dest: value}`` (Distiller's defaults filled
    in for the ones missing), with the ``--compress`` schedule when given."""
    a = {**DISTILLER_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    out = Translation()
    notes = out.notes
    arch = map_arch(a["arch"])
    if a.get("data") is None:
        raise DistillerError("the dataset directory (Distiller's first argument) is missing")
    data = infer_dataset(str(a["data"]), a["arch"].lower())
    data["batch_size"] = int(a["batch_size"])
    if a["validation_split"]:
        data["val_fraction"] = float(a["validation_split"])
    if data["name"] == "imagefolder":
        notes.append(
            "ImageNet: images are resized to 224x224 and flipped; Distiller's RandomResizedCrop "
            "and its resize-256/center-crop evaluation are not applied"
        )
    cfg: dict[str, Any] = out.config
    cfg["name"] = a["name"] or "distiller-" + re.sub(r"[^A-Za-z0-9_.-]", "-", arch)
    cfg["out_dir"] = a["out_dir"]
    cfg["data"] = data
    cfg["model"] = {"arch": arch}
    start = a.get("resume_from") or a.get("exp_load_weights_from")
    if start:
        cfg["model"]["checkpoint"] = start
        if a.get("resume_from"):
            notes.append(
                "--resume-from: training starts from the checkpoint's weights at epoch 0; "
                "Distiller's optimizer state, epoch and compression state are not read (resume "
                "an interrupted kdistill run with --resume)"
            )
    if a.get("pretrained"):
        raise DistillerError(
            "--pretrained downloads torchvision's weights, and kdistill never downloads: give "
            "the student's weights as a local file with --exp-load-weights-from PATH"
        )
    cfg["optim"] = {
        "name": "sgd",
        "lr": float(a["lr"]),
        "momentum": float(a["momentum"]),
        "nesterov": False,
        "weight_decay": float(a["weight_decay"]),
    }
    cfg["schedule"] = {"name": "constant"}
    train: dict[str, Any] = {"epochs": int(a["epochs"])}
    if a["seed"] is not None:
        train["seed"] = int(a["seed"])
    else:
        notes.append("no --seed: Distiller draws a random seed; kdistill uses seed 0")
    if a["deterministic"]:
        train["deterministic"] = True
    train["device"] = _device(a, notes)
    cfg["train"] = train
    _kd_flags(a, cfg, notes)
    if not a.get("kd_teacher"):
        for flag in ("kd_temperature", "kd_distill_wt", "kd_student_wt", "kd_teacher_wt",
                     "kd_start_epoch"):  # fmt: skip
            if args.get(flag) is not None:
                notes.append(
                    f"--{flag.replace('_', '-')} ignored: distillation is on only with "
                    "--kd-teacher (as in Distiller)"
                )
    for flag, what in (
        ("workers", "kdistill's in-memory pipeline decodes once and needs no loader workers"),
        ("print_freq", "kdistill reports every epoch (and shows a progress bar)"),
    ):
        if args.get(flag) is not None:
            notes.append(f"--{flag.replace('_', '-')} {args[flag]} ignored: {what}")
    if schedule_file is not None:
        translate_schedule(schedule_file, out, epochs=int(a["epochs"]))
    return out


def _device(a: Mapping[str, Any], notes: list[str]) -> str:
    if a.get("cpu"):
        return "cpu"
    gpus = a.get("gpus")
    if gpus is None:
        return "auto"
    ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise DistillerError(f"--gpus {gpus!r}: expected device ids such as 0 or 0,1")
    if len(ids) > 1:
        notes.append(
            f"--gpus {gpus}: kdistill runs one device per process; this run uses cuda:{ids[0]}. "
            f"Data-parallel on {len(ids)} GPUs: kdistill train CONFIG --nproc {len(ids)}"
        )
    return f"cuda:{ids[0]}"


def _kd_flags(a: Mapping[str, Any], cfg: dict[str, Any], notes: list[str]) -> None:
    """Distiller distills only with ``--kd-teacher``; its weights are free (not 1 - alpha)."""
    given = [k for k in ("kd_resume", "kd_pretrained") if a.get(k)]
    if not a.get("kd_teacher"):
        if given:
            raise DistillerError(
                f"--{given[0].replace('_', '-')} needs --kd-teacher ARCH (in Distiller, "
                "distillation is on only with --kd-teacher)"
            )
        return
    teacher: dict[str, Any] = {"arch": map_arch(a["kd_teacher"], "--kd-teacher")}
    if a.get("kd_resume"):
        teacher["checkpoint"] = a["kd_resume"]
        if a.get("kd_pretrained"):
            notes.append("--kd-pretrained ignored: the teacher's weights come from --kd-resume")
    elif a.get("kd_pretrained"):
        raise DistillerError(
            "--kd-pretrained downloads torchvision's weights for the teacher, and kdistill never "
            "downloads: give the trained teacher as a local file with --kd-resume PATH (a "
            "kdistill model file or run directory, a .pt/.pth state dict, or a Distiller "
            ".pth.tar checkpoint)"
        )
    cfg["kd"] = {
        "teachers": [teacher],
        "temperature": float(a["kd_temperature"]),
        "alpha": float(a["kd_student_wt"]),
        "beta": float(a["kd_distill_wt"]),
        "teacher_weight": float(a["kd_teacher_wt"]),
        "start_epoch": int(a["kd_start_epoch"]),
    }


# ----------------------------------------------------------------------------- schedules


def translate_schedule(path: str, out: Translation, *, epochs: int) -> None:
    """Add the policies and learning-rate schedule of Distiller's YAML schedule at ``path``."""
    from kdistill.config.loader import read_yaml

    try:
        doc = read_yaml(path)
    except ConfigError as e:
        raise DistillerError(f"--compress: {e}") from None
    where = f"--compress {path}"
    known = {"version", "pruners", "regularizers", "quantizers", "lr_schedulers", "extensions",
             "policies"}  # fmt: skip
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
    instances: dict[str, tuple[str, dict[str, Any]]] = {}
    for section in ("pruners", "regularizers", "quantizers", "lr_schedulers", "extensions"):
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
    policies = doc.get("policies") or []
    if not isinstance(policies, list):
        raise DistillerError(f"{where}: policies must be a list")
    state = _ScheduleState(where, epochs, out)
    kinds = {"pruner": "pruners", "regularizer": "regularizers", "quantizer": "quantizers",
             "lr_scheduler": "lr_schedulers", "extension": "extensions"}  # fmt: skip
    used: set[str] = set()
    for i, policy in enumerate(policies):
        if not isinstance(policy, dict):
            raise DistillerError(f"{where}: policies[{i}] must be a mapping")
        kind = [k for k in kinds if k in policy]
        if len(kind) != 1:
            raise DistillerError(
                f"{where}: policies[{i}] must name exactly one of {', '.join(kinds)}, got "
                f"{', '.join(kind) or 'none'}"
            )
        ref = policy[kind[0]]
        name = ref.get("instance_name") if isinstance(ref, dict) else None
        if name not in instances or instances[name][0] != kinds[kind[0]]:
            defined = [n for n, (s, _) in instances.items() if s == kinds[kind[0]]]
            raise DistillerError(
                f"{where}: policies[{i}] refers to {kind[0]} {name!r}, which {kinds[kind[0]]} "
                f"does not define (defined: {', '.join(defined) or 'none'})"
            )
        unknown = sorted(set(policy) - {kind[0], "starting_epoch", "ending_epoch", "frequency",
                                        "epochs"})  # fmt: skip
        if unknown:
            raise DistillerError(f"{where}: policies[{i}] has unknown key(s) {', '.join(unknown)}")
        used.add(name)
        window = _window(policy, epochs, f"{where}: policies[{i}] ({name})")
        section, spec = instances[name]
        getattr(state, section)(name, spec, window, ref.get("args") or {})
    for name, (section, _) in instances.items():
        if name not in used:
            out.notes.append(f"{section}.{name} is defined but no policy uses it (as in Distiller)")
    state.finish()


@dataclass(frozen=True)
class _Window:
    """A policy's epochs as Distiller schedules them: ``start, start + f, ... < end``."""

    start: int
    end: int
    frequency: int

    @property
    def epochs(self) -> list[int]:
        return list(range(self.start, self.end, self.frequency))


def _window(policy: Mapping[str, Any], epochs: int, where: str) -> _Window:
    if "epochs" in policy:
        listed = policy["epochs"]
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(e, int) and e >= 0 for e in listed)
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
        return _Window(steps[0], steps[-1] + 1, gaps.pop() if gaps else 1)
    for key in ("starting_epoch", "ending_epoch"):
        if not isinstance(policy.get(key), int) or isinstance(policy.get(key), bool):
            raise DistillerError(f"{where}: needs {key} (an epoch number) or an epochs list")
    start, end = policy["starting_epoch"], policy["ending_epoch"]
    frequency = policy.get("frequency", 1)
    if not isinstance(frequency, int) or frequency < 1:
        raise DistillerError(f"{where}: frequency must be an integer >= 1, got {frequency!r}")
    if not 0 <= start < end:
        raise DistillerError(
            f"{where}: starting_epoch {start} must be >= 0 and before ending_epoch {end}"
        )
    if start >= epochs:
        raise DistillerError(
            f"{where}: starting_epoch {start} is not before --epochs {epochs}: it would never act"
        )
    return _Window(start, end, frequency)


def _number(spec: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise DistillerError(f"{where}: {key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _only(spec: Mapping[str, Any], allowed: set[str], where: str, cls: str) -> None:
    unknown = sorted(set(spec) - allowed - {"class"})
    if unknown:
        raise DistillerError(
            f"{where}: {cls} setting(s) {', '.join(unknown)} are not supported; supported: "
            f"{', '.join(sorted(allowed))}"
        )


def _modules(spec: Mapping[str, Any], where: str) -> list[str]:
    weights = spec.get("weights")
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, list) or not weights or not all(isinstance(w, str) for w in weights):
        raise DistillerError(f"{where}: weights must list parameter names, got {weights!r}")
    return [parameter_to_module(w) for w in weights]


class _ScheduleState:
    """Turns each scheduled instance into kdistill policies (one method per schedule section)."""

    def __init__(self, where: str, epochs: int, out: Translation) -> None:
        self.where = where
        self.epochs = epochs
        self.out = out
        self.policies: list[dict[str, Any]] = []
        self.thinning: list[tuple[str, int]] = []  # (structure, epoch)
        self.lr: dict[str, Any] | None = None

    def _clip_end(self, end: int) -> int | None:
        """kdistill's ending_epoch (null = the end) for Distiller's, which may pass the run."""
        return None if end >= self.epochs else end

    # -- pruners
    def pruners(self, name: str, spec: dict[str, Any], w: _Window, args: Mapping[str, Any]) -> None:
        where, cls = f"{self.where}: pruners.{name}", spec["class"]
        if args:
            raise DistillerError(
                f"{where}: policy args {sorted(args)} are not supported for pruners"
            )
        if cls in ("MagnitudeParameterPruner", "SensitivityPruner"):
            self._threshold_pruner(name, spec, w, where, cls)
            return
        if cls == "SparsityLevelParameterPruner":
            _only(spec, {"levels"}, where, cls)
            levels = spec.get("levels")
            if not isinstance(levels, dict) or not levels:
                raise DistillerError(f"{where}: levels must map parameter names to sparsities")
            by_level: dict[float, list[str]] = {}
            for param, level in levels.items():
                value = _number({"level": level}, "level", f"{where}: levels[{param}]", 0.0, 0.999)
                by_level.setdefault(value, []).append(parameter_to_module(str(param)))
            for level, modules in by_level.items():
                if level > 0:
                    self.policies.append(self._pruning(modules, w, target=level, one_shot=True))
            if len(w.epochs) > 1:
                self.out.notes.append(
                    f"pruners.{name}: pruned once at epoch {w.start}; the masks then stay (later "
                    "steps to the same level change nothing)"
                )
            return
        structure = "elements"
        if cls != "AutomatedGradualPruner":
            group = spec.get("group_type")
            if group not in GROUP_TYPES:
                raise DistillerError(
                    f"{where}: group_type {group!r} is not supported; supported: "
                    f"{', '.join(GROUP_TYPES)}"
                )
            structure = GROUP_TYPES[group]
        if cls == "L1RankedStructureParameterPruner":  # one-shot
            _only(spec, {"desired_sparsity", "group_type", "weights"}, where, cls)
            target = _number(spec, "desired_sparsity", where, 0.0, 0.999)
            self.policies.append(
                self._pruning(
                    _modules(spec, where), w, target=target, one_shot=True, structure=structure
                )
            )
            return
        allowed = {"initial_sparsity", "final_sparsity", "weights"}
        _only(spec, allowed | ({"group_type"} if structure != "elements" else set()), where, cls)
        initial = _number(spec, "initial_sparsity", where, 0.0, 0.999)
        final = _number(spec, "final_sparsity", where, 0.0, 0.999)
        if initial > final:
            raise DistillerError(
                f"{where}: initial_sparsity {initial} is above final_sparsity {final}"
            )
        # Distiller's AGP reaches final_sparsity at its last step: start + span, with
        # span = ((end - start - 1) // frequency) * frequency.
        span = ((w.end - w.start - 1) // w.frequency) * w.frequency
        if span <= 0:
            raise DistillerError(
                f"{where}: AGP needs at least two pruning steps between starting_epoch {w.start} "
                f"and ending_epoch {w.end} (every {w.frequency} epochs), as in Distiller"
            )
        last = w.start + span
        if last >= self.epochs:
            raise DistillerError(
                f"{where}: AGP's last step (epoch {last}) is not before --epochs {self.epochs}"
            )
        policy = self._pruning(_modules(spec, where), _Window(w.start, last + 1, w.frequency),
                               target=final, one_shot=False, structure=structure,
                               initial=initial)  # fmt: skip
        self.policies.append(policy)

    def _threshold_pruner(
        self, name: str, spec: dict[str, Any], w: _Window, where: str, cls: str
    ) -> None:
        """Magnitude (absolute thresholds) and sensitivity (thresholds in standard deviations of
        each weight) pruners: one policy per threshold; ``'*'`` covers the layers not named."""
        key = "thresholds" if cls == "MagnitudeParameterPruner" else "sensitivities"
        _only(spec, {key}, where, cls)
        table = spec.get(key)
        if not isinstance(table, dict) or not table:
            raise DistillerError(f"{where}: {key} must map parameter names (or '*') to numbers")
        named = {parameter_to_module(str(k)): v for k, v in table.items() if k != "*"}
        groups: dict[float, list[str]] = {}
        for module, value in named.items():
            t = _number({key: value}, key, f"{where}: {key}[{module}]", 0.0, math.inf)
            groups.setdefault(t, []).append(module)
        policies = [(t, modules) for t, modules in groups.items()]
        if "*" in table:
            t = _number({key: table["*"]}, key, f"{where}: {key}['*']", 0.0, math.inf)
            others = (
                ["re:(?!(?:" + "|".join(re.escape(m) for m in named) + ")$).*"] if named else []
            )
            policies.append((t, others))
            self.out.notes.append(
                f"pruners.{name}: '*' covers the Conv2d and Linear weights not named; Distiller "
                "also thresholds biases and BatchNorm weights, which kdistill does not prune"
            )
        for t, modules in policies:
            if t == 0:
                continue
            policy: dict[str, Any] = {
                "kind": "pruning",
                "schedule": "threshold",
                "threshold": t,
                "scope": "per_layer",
                "modules": modules,
                "starting_epoch": w.start,
                "ending_epoch": self._clip_end(w.end),
                "frequency": w.frequency,
            }
            if cls == "SensitivityPruner":
                policy["threshold_in_std"] = True
            self.policies.append(policy)

    def _pruning(
        self, modules: list[str], w: _Window, *, target: float, one_shot: bool,
        structure: str = "elements", initial: float = 0.0,
    ) -> dict[str, Any]:  # fmt: skip
        policy: dict[str, Any] = {
            "kind": "pruning",
            "target_sparsity": target,
            **({"initial_sparsity": initial} if initial else {}),
            "schedule": "one_shot" if one_shot else "agp",
            "scope": "per_layer",  # Distiller prunes each tensor to its level
            "modules": modules,
            "starting_epoch": w.start,
        }
        if not one_shot:
            policy["ending_epoch"] = w.end
            policy["frequency"] = w.frequency
        if structure != "elements":
            policy["structure"] = structure
        return policy

    # -- regularizers
    def regularizers(
        self, name: str, spec: dict[str, Any], w: _Window, args: Mapping[str, Any]
    ) -> None:
        where, cls = f"{self.where}: regularizers.{name}", spec["class"]
        _only(spec, {"reg_regims", "threshold_criteria"}, where, cls)
        unknown_args = sorted(set(args) - {"keep_mask"})
        if unknown_args:
            raise DistillerError(
                f"{where}: policy args {unknown_args} are not supported; supported: keep_mask"
            )
        if spec.get("threshold_criteria") is not None or args.get("keep_mask"):
            self.out.notes.append(
                f"regularizers.{name}: threshold_criteria / keep_mask ignored: kdistill's "
                "regularizer adds the penalty only; to zero and remove the groups it shrinks, add "
                "a structured pruning policy"
            )
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
                    raise DistillerError(
                        f"{pwhere}: expected [strength, group type], got {regim!r}"
                    )
                strength, group_type = regim
                if group_type not in GROUP_TYPES:
                    raise DistillerError(
                        f"{pwhere}: group type {group_type!r} is not supported; supported: "
                        f"{', '.join(GROUP_TYPES)}"
                    )
                group = GROUP_TYPES[group_type]
            value = _number({"strength": strength}, "strength", pwhere, 0.0, math.inf)
            groups.setdefault((value, group), []).append(parameter_to_module(str(param)))
        for (strength, group), modules in groups.items():
            if strength == 0:
                continue
            policy: dict[str, Any] = {
                "kind": "regularization",
                "type": "l1" if group == "l1" else "group_lasso",
                "weight": strength,
                "modules": modules,
                "starting_epoch": w.start,
                "ending_epoch": self._clip_end(w.end),
            }
            if group == "channels":
                policy["groups"] = "channels"
            if w.frequency != 1:
                self.out.notes.append(
                    f"regularizers.{name}: frequency {w.frequency} ignored: the penalty applies "
                    "in every epoch of its window"
                )
            self.policies.append(policy)

    # -- quantizers
    def quantizers(
        self, name: str, spec: dict[str, Any], w: _Window, args: Mapping[str, Any]
    ) -> None:
        where, cls = f"{self.where}: quantizers.{name}", spec["class"]
        if args:
            raise DistillerError(
                f"{where}: policy args {sorted(args)} are not supported for quantizers"
            )
        if cls == _OLD_QUANTIZER_SPELLING:
            self.out.notes.append(
                f"quantizers.{name}: {cls} is read as Distiller's QuantAwareTrainRangeLinearQuantizer "
                "(the class's name in Distiller; the old spelling is kept as an alias)"
            )
        ignored = {"bits_bias", "ema_decay", "quantize_inputs", "num_bits_inputs", "clip_acts"}
        _only(spec, {"bits_activations", "bits_weights", "mode", "per_channel_wts", "overrides"}
              | ignored, where, cls)  # fmt: skip
        policy: dict[str, Any] = {"kind": "quantization", "starting_epoch": w.start}
        for key, ours in (("bits_weights", "weight_bits"), ("bits_activations", "activation_bits")):
            policy[ours] = _bits(spec.get(key), f"{where}: {key}")
            if policy[ours] is None:
                raise DistillerError(
                    f"{where}: {key} is {spec.get(key)!r}; kdistill's quantization-aware training "
                    "quantizes weights and activations (and converts to int8): give both "
                    "bits_weights and bits_activations in 2..8 (overrides keep single layers in float)"
                )
        weight_mode, act_mode = _modes(spec.get("mode", "SYMMETRIC"), where)
        policy["activation_symmetric"] = act_mode == "SYMMETRIC"
        policy["weight_per_channel"] = bool(spec.get("per_channel_wts", False))
        if weight_mode != "SYMMETRIC":
            self.out.notes.append(
                f"quantizers.{name}: weights are quantized SYMMETRIC, not {weight_mode}: the int8 "
                "kernels kdistill trains for take symmetric weights (activations follow the mode)"
            )
        if act_mode == "ASYMMETRIC_SIGNED":
            self.out.notes.append(
                f"quantizers.{name}: ASYMMETRIC_SIGNED activations are quantized as asymmetric "
                "unsigned (the same grid shifted by the zero point)"
            )
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise DistillerError(f"{where}: overrides must map layer names to settings")
        policy["overrides"] = {
            override_key(str(k)): _override(v, f"{where}: overrides[{k}]")
            for k, v in overrides.items()
        }
        present = sorted(k for k in ignored if k in spec)
        if present:
            self.out.notes.append(
                f"quantizers.{name}: {', '.join(present)} ignored (kdistill keeps biases in int32, "
                "tracks ranges with its own observers and leaves the network's input in float)"
            )
        if w.end < self.epochs:
            self.out.notes.append(
                f"quantizers.{name}: quantization-aware training runs from epoch {w.start} to the "
                f"end of training (the schedule's ending_epoch {w.end} is not used)"
            )
        self.policies.append(policy)

    # -- learning rate
    def lr_schedulers(
        self, name: str, spec: dict[str, Any], w: _Window, args: Mapping[str, Any]
    ) -> None:
        where, cls = f"{self.where}: lr_schedulers.{name}", spec["class"]
        if self.lr is not None:
            raise DistillerError(
                f"{where}: a second learning-rate scheduler; kdistill runs one schedule"
            )
        if args:
            raise DistillerError(
                f"{where}: policy args {sorted(args)} are not supported for lr schedulers"
            )
        factor = _lr_closed_form(cls, spec, where)
        self.lr = _as_schedule(_epoch_factors(factor, w, self.epochs))

    # -- extensions
    def extensions(
        self, name: str, spec: dict[str, Any], w: _Window, args: Mapping[str, Any]
    ) -> None:
        where, cls = f"{self.where}: extensions.{name}", spec["class"]
        _only(spec, {"thinning_func_str", "arch", "dataset"}, where, cls)
        expected = "remove_filters" if cls == "FilterRemover" else "remove_channels"
        func = spec.get("thinning_func_str", expected)
        if func != expected:
            raise DistillerError(f"{where}: {cls} uses thinning_func_str {expected}, got {func!r}")
        self.thinning.append(("filters" if cls == "FilterRemover" else "channels", w.start))

    def finish(self) -> None:
        """Attach thinning to the structured pruners it removes, and write the results."""
        for structure, epoch in self.thinning:
            targets = [p for p in self.policies if p.get("structure") == structure]
            if not targets:
                raise DistillerError(
                    f"{self.where}: a {'FilterRemover' if structure == 'filters' else 'ChannelRemover'} "
                    f"extension at epoch {epoch}, but no structured pruner with group_type "
                    f"{'Filters/Rows' if structure == 'filters' else 'Channels/Cols'} to remove"
                )
            for p in targets:
                last = p["starting_epoch"] if p["schedule"] == "one_shot" else p["ending_epoch"] - 1
                if epoch < last:
                    raise DistillerError(
                        f"{self.where}: thinning at epoch {epoch} comes before the last pruning step "
                        f"(epoch {last}) of the {structure} pruner of {', '.join(p['modules'])}"
                    )
                p["remove_epoch"] = max(epoch, last)
        self._scale_penalties_by_student_weight()
        if self.policies:
            self.out.config["policies"] = self.policies
        if self.lr is not None:
            self.out.config["schedule"] = self.lr

    def _scale_penalties_by_student_weight(self) -> None:
        """Distiller adds the distillation policy after the schedule's, and each policy
        receives the loss so far: while distilling, the loss is ``sw * (CE + penalties) + dw *
        KL``. kdistill adds penalties to the weighted total, so their strengths are multiplied
        by ``sw`` in the distillation epochs (a policy that spans the start is split there)."""
        kd = self.out.config.get("kd")
        if kd is None or kd["alpha"] == 1.0:
            return
        alpha, start = kd["alpha"], kd["start_epoch"]
        scaled: list[dict[str, Any]] = []
        for p in self.policies:
            if p["kind"] != "regularization":
                scaled.append(p)
                continue
            end = self.epochs if p["ending_epoch"] is None else p["ending_epoch"]
            if p["starting_epoch"] < start < end:  # labels only, then distillation
                scaled.append({**p, "ending_epoch": start})
                p = {**p, "starting_epoch": start}
            if p["starting_epoch"] >= start:
                p = {**p, "weight": p["weight"] * alpha}
            if p["weight"] > 0:
                scaled.append(p)
        if any(p["kind"] == "regularization" for p in scaled):
            self.out.notes.append(
                f"regularizers: strengths multiplied by --kd-sw {alpha} while distilling, as "
                "Distiller's loss is sw * (CE + penalties) + dw * KL; kdistill adds penalties to "
                "the weighted total"
            )
        self.policies = scaled


def _bits(value: Any, where: str) -> int | None:
    if value is None or value == 32:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
        raise DistillerError(
            f"{where}: {value!r} bits; kdistill trains 2..8-bit quantization (null or 32 = float)"
        )
    return value


def _modes(mode: Any, where: str) -> tuple[str, str]:
    valid = ("SYMMETRIC", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED")
    if isinstance(mode, dict):
        unknown = sorted(set(mode) - {"activations", "weights"})
        if unknown:
            raise DistillerError(f"{where}: mode keys {unknown}; valid: activations, weights")
        weights, acts = mode.get("weights", "SYMMETRIC"), mode.get("activations", "SYMMETRIC")
    else:
        weights = acts = mode
    for m in (weights, acts):
        if m not in valid:
            raise DistillerError(f"{where}: mode {m!r}; valid: {', '.join(valid)}")
    return weights, acts


def _override(value: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        raise DistillerError(f"{where}: expected a mapping of bits_weights / bits_activations")
    unknown = sorted(set(value) - {"bits_weights", "bits_activations", "bits_bias"})
    if unknown:
        raise DistillerError(
            f"{where}: {', '.join(unknown)} not supported in overrides; supported: bits_weights, "
            "bits_activations (bits_bias is ignored)"
        )
    weights = _bits(value.get("bits_weights"), f"{where}.bits_weights")
    acts = _bits(value.get("bits_activations"), f"{where}.bits_activations")
    if weights is None and acts is None:
        return None  # the layer stays in float
    if weights is None or acts is None:
        raise DistillerError(
            f"{where}: kdistill quantizes a layer's weights and activations together or keeps "
            "both in float; give both bits or neither"
        )
    return {"weight_bits": weights, "activation_bits": acts}


def _lr_closed_form(cls: str, spec: Mapping[str, Any], where: str) -> Any:
    """``epoch -> lr factor`` of a torch scheduler stepped with an explicit epoch, as
    Distiller's LRPolicy steps it."""
    if cls == "StepLR":
        _only(spec, {"step_size", "gamma"}, where, cls)
        size = spec.get("step_size")
        if not isinstance(size, int) or size < 1:
            raise DistillerError(f"{where}: step_size must be an integer >= 1, got {size!r}")
        gamma = _number(spec, "gamma", where, 0.0, 1.0) if "gamma" in spec else 0.1
        return lambda e: gamma ** (e // size)
    if cls == "ExponentialLR":
        _only(spec, {"gamma"}, where, cls)
        gamma = _number(spec, "gamma", where, 0.0, 1.0)
        return lambda e: gamma**e
    milestones = spec.get("milestones")
    if not isinstance(milestones, list) or not all(isinstance(m, int) for m in milestones):
        raise DistillerError(f"{where}: milestones must list epochs, got {milestones!r}")
    if cls == "MultiStepLR":
        _only(spec, {"milestones", "gamma"}, where, cls)
        gamma = _number(spec, "gamma", where, 0.0, 1.0) if "gamma" in spec else 0.1
        gammas = [gamma] * len(milestones)
    else:
        _only(spec, {"milestones", "gammas"}, where, cls)
        gammas = spec.get("gammas")
        if not isinstance(gammas, list) or len(gammas) != len(milestones):
            raise DistillerError(
                f"{where}: gammas must give one factor per milestone, got {gammas!r}"
            )
        gammas = [_number({"gamma": g}, "gamma", where, 0.0, math.inf) for g in gammas]
    return lambda e: math.prod(g for m, g in zip(milestones, gammas) if e >= m)


def _epoch_factors(factor: Any, w: _Window, epochs: int) -> list[float]:
    """The lr factor of every epoch: Distiller steps the scheduler at the end of each epoch of
    the policy (with the next epoch's number), so epoch ``e`` runs at ``factor(s + 1)`` for the
    last stepped epoch ``s < e``, and at the initial lr before the first step."""
    steps = [s for s in w.epochs if s < epochs]
    out = []
    for e in range(epochs):
        done = [s for s in steps if s < e]
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
