"""Distiller's command line (``compress_classifier.py``'s flags, with its defaults) and its
positional dataset directory, as the sections of a kdistill config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.interop.distiller.errors import DistillerError, Translation
from kdistill.interop.distiller.names import arch_args, map_arch
from kdistill.interop.distiller.schedule import translate_schedule

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
    cfg["model"] = {"arch": arch, **_args(a["arch"])}
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


def _args(name: str) -> dict[str, Any]:
    args = arch_args(name)
    return {"args": args} if args else {}


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
    teacher: dict[str, Any] = {
        "arch": map_arch(a["kd_teacher"], "--kd-teacher"),
        **_args(a["kd_teacher"]),
    }
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
