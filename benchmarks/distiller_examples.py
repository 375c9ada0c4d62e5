"""Run every ``compress_classifier.py`` example schedule of a Distiller checkout through
``kdistill distiller --dry-run``, with the command line its header writes, and record which are
accepted (translated and resolved: data, models, teacher files, layer names) and why the others
are refused.

The examples' data, checkpoints and pretrained weights are not here: the dataset directory is
replaced by a small CIFAR-10 (CIFAR models) or ImageNet-style folder (the rest) made on the
spot, checkpoint files by one of the same architecture saved as Distiller saves them (its
parameter names under ``module.``), and ``--pretrained`` (which makes Distiller
download torchvision's weights, what kdistill never does) is dropped and counted.

    python benchmarks/distiller_examples.py --distiller PATH/TO/distiller \
        --out benchmarks/results/distiller_examples.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import provenance, publish

NOT_CLASSIFIERS = ("GNMT", "ncf", "word_lang", "object_detection", "baidu-rnn")


def write_cifar10(root: Path) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 2)
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (base / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels.tolist()}))


def write_imagefolder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(10):
                pixels = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def command_line(text: str) -> list[str] | None:
    """The first ``compress_classifier.py`` command a schedule's header comments write."""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and "compress_classifier.py" in line:
            tail = line.split("compress_classifier.py", 1)[1]
            tail = tail.split("|")[0].split(">")[0]
            try:
                return shlex.split(tail)
            except ValueError:
                return tail.split()
    return None


def stand_in(arch: str, cifar: bool, work: Path) -> Path:
    """A checkpoint as Distiller saves one (``arch`` and ``module.``-prefixed tensors) for
    ``arch`` on the stand-in data: what an example's ``--resume-from`` file would be."""
    import torch

    from kdistill.interop.distiller import map_arch
    from kdistill.interop.distiller.names import arch_args
    from kdistill.models import build_model

    path = work / f"{arch}-{'cifar' if cifar else 'imagenet'}.pth.tar"
    if not path.exists():
        shape = (3, 32, 32) if cifar else (3, 224, 224)
        model = build_model(map_arch(arch), 10 if cifar else 2, shape, arch_args(arch))
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"arch": arch, "state_dict": state}, path)
    return path


def prepare(tokens: list[str], schedule: Path, data: dict[str, Path], work: Path) -> list[str]:
    """The example's tokens with the schedule, data and checkpoints replaced by local files."""
    from kdistill.cli.main import build_parser

    parser = build_parser()
    first, _unknown = parser.parse_known_args(["distiller", *tokens])
    arch = (first.arch or "resnet18").lower()
    cifar = "cifar" in arch
    out: list[str] = []
    value_flags = {"--compress", "--resume-from", "--resume", "--exp-load-weights-from",
                   "--kd-resume", "-o", "--out-dir"}  # fmt: skip
    skip_next = False
    for i, tok in enumerate(tokens):
        if skip_next:
            skip_next = False
            continue
        flag, eq, _value = tok.partition("=")
        if flag == "--pretrained":
            continue
        if flag in value_flags:
            teacher = (first.kd_teacher or arch) if flag == "--kd-resume" else arch
            replacement = {"--compress": str(schedule), "-o": "logs", "--out-dir": "logs"}.get(
                flag
            ) or str(stand_in(teacher, cifar, work))
            out += [f"{flag}={replacement}"]
            skip_next = not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-")
            continue
        out.append(tok)
    if not any(t.startswith("--compress") for t in out):
        out.append(f"--compress={schedule}")
    dataset = data["cifar"] if cifar else data["imagenet"]
    return [str(dataset) if t == first.data else t for t in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distiller", required=True, help="a checkout of IntelLabs/distiller")
    parser.add_argument("--out", default="benchmarks/results/distiller_examples.json")
    args = parser.parse_args()
    from kdistill.cli.main import main as kdistill

    examples = sorted((Path(args.distiller) / "examples").rglob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = {"cifar": work / "data.cifar10", "imagenet": work / "data.imagenet"}
        write_cifar10(data["cifar"])
        write_imagefolder(data["imagenet"])
        for path in examples:
            name = str(path.relative_to(Path(args.distiller) / "examples"))
            if any(part in name for part in NOT_CLASSIFIERS):
                continue
            tokens = command_line(path.read_text(errors="replace"))
            if tokens is None:
                continue
            argv = ["distiller", *prepare(tokens, path, data, work), "--dry-run",
                    "-o", str(work / "logs")]  # fmt: skip
            printed, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                try:
                    code = kdistill(argv)
                except SystemExit as e:
                    code = int(e.code or 0)
            error = errors.getvalue().strip().splitlines()
            rows.append({
                "example": name,
                "accepted": code == 0,
                "pretrained_dropped": "--pretrained" in tokens,
                "reason": None if code == 0 else re.sub(r"\s+", " ", error[-1] if error else ""),
                "notes": [line[6:] for line in printed.getvalue().splitlines()
                          if line.startswith("note: ")],
            })  # fmt: skip
    accepted = sum(r["accepted"] for r in rows)
    report = {
        **provenance("distiller_examples.py"),
        "examples": len(rows),
        "accepted": accepted,
        "refused": len(rows) - accepted,
        "rows": rows,
    }
    publish(report, args.out)
    for r in rows:
        print(("ok      " if r["accepted"] else "REFUSED ") + r["example"]
              + ("" if r["accepted"] else f"\n        {r['reason']}"))  # fmt: skip
    print(f"{accepted} of {len(rows)} accepted", file=sys.stderr)


if __name__ == "__main__":
    main()
