"""FMNIST-KD epoch-time benchmark: student-only vs online distillation vs cached distillation.

Workload (as in ``shared/research/peer-findings.md``): Fashion-MNIST 60k, LeNet-5 student,
batch 128, SGD (nesterov, momentum 0.9, lr 0.05, weight decay 5e-4), random crop (pad 2) + flip,
KD loss 0.1 * CE + 0.9 * T^2 * KL at T=4, gradients clipped at 2 in every mode; teacher: the
ResNet-20 of the recipe
``fashion-mnist/resnet20-teacher``.

Each measurement runs in its own process (so peak memory is its own), and the modes are
alternated round by round so that drift of this shared machine hits them all alike. Epoch
timing uses a fixed number of batches (``--batches``) per measured epoch; the result is the
median over rounds. Ratios are computed from medians measured in the same invocation.

    python benchmarks/fmnist_kd.py --teacher runs/fmnist-resnet20-teacher --rounds 3 \
        --out benchmarks/results/fmnist_kd.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from common import provenance, publish

MODES = ("student", "online", "cached", "teacher_inference")
THROUGHPUT_BATCHES = (128, 512)


def config(teacher: str, mode: str, out: str, *, precision: str, views: int | None):
    from kdistill.config import RunConfig, apply_values, from_dict

    cfg = from_dict(
        RunConfig,
        {
            "name": f"bench-{mode}",
            "out_dir": out,
            "data": {
                "name": "fashion-mnist",
                "batch_size": 128,
                "augment": {"crop_padding": 2, "hflip": True},
            },
            "model": {"arch": "lenet5"},
            "optim": {
                "name": "sgd",
                "lr": 0.05,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 5e-4,
                # every mode clips: timed epochs repeat the same batches, on which the stock
                # recipe's unclipped student diverges (NaN) after a few hundred steps
                "grad_clip": 2.0,
            },
            "train": {"epochs": 10, "tensorboard": False, "threads": 2},
        },
    )
    if mode != "student":  # teacher_inference: the same teacher, run alone
        cfg = apply_values(
            cfg,
            {
                "kd.teachers.0.checkpoint": teacher,
                "kd.temperature": 4.0,
                "kd.alpha": 0.1,
                "kd.beta": 0.9,
                "kd.teacher_precision": precision,
                "kd.teacher_cache.enabled": mode == "cached",
                "kd.teacher_cache.views": views,
            },
        )
    return cfg


class FirstBatches:
    """The first ``count`` batches of a loader, as a loader (an epoch of fixed length)."""

    def __init__(self, loader: Any, count: int) -> None:
        self.loader, self.count = loader, min(count, len(loader))

    def __iter__(self):
        return (b for _, b in zip(range(self.count), self.loader, strict=False))

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


@dataclass
class Workload:
    """One mode of the workload, assembled as ``kdistill train`` assembles it (``build_run``),
    with a trainer whose epochs are ``batches`` long and run no evaluation or callbacks."""

    parts: Any
    trainer: Any
    cache_ready_s: float
    cache_built: bool


def build_workload(
    teacher_path: str, mode: str, work: str, *, precision: str, views: int | None, batches: int
) -> Workload:
    from kdistill.engine import Trainer
    from kdistill.experiment import build_run

    cfg = config(teacher_path, mode, work, precision=precision, views=views)
    messages: list[str] = []
    started = time.perf_counter()
    parts = build_run(cfg, log=messages.append, progress=False)
    ready_s = time.perf_counter() - started
    trainer = Trainer(
        parts.objective,
        parts.optimizer_factory,
        FirstBatches(parts.train_loader, batches),
        {},
        parts.loop,
        [],
    )
    return Workload(parts, trainer, ready_s, any("computing" in m for m in messages))


def measure(args: argparse.Namespace) -> dict:
    """One process, one mode: build what the mode needs, then time epochs of ``--batches``."""
    w = build_workload(
        args.teacher,
        args.mode,
        args.work,
        precision=args.precision,
        views=args.views,
        batches=args.batches,
    )
    result: dict = {"mode": args.mode}
    if w.parts.cache is not None:
        result["cache_ready_s"] = w.cache_ready_s
        result["cache_built"] = w.cache_built
        result["cache_bytes"] = w.parts.cache.size_bytes()
    times = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        if args.mode == "teacher_inference":
            # the teacher alone over the same augmented batches the student would see
            loader = w.trainer.train_loader
            loader.set_epoch(epoch)
            for batch in loader:
                w.parts.teacher.live(batch.inputs)
        else:
            w.trainer.train_epoch(epoch)  # the training step as kdistill train runs it
        times.append(time.perf_counter() - started)
    result["epoch_s"] = times
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def teacher_throughput(teacher_path: str) -> dict:
    """Teacher images per second at the student's batch and at a larger one, fp32 and bf16:
    does running the teacher on bigger batches than the student's pay on this machine?"""
    import torch

    from kdistill.experiment import load_model

    torch.set_num_threads(2)
    model = load_model(teacher_path).model
    x = torch.randn(1024, 1, 28, 28)
    out: dict = {}
    for precision in ("fp32", "bf16"):
        for batch in THROUGHPUT_BATCHES:
            rates = []
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
            ):
                model(x[:batch])
                for _ in range(3):
                    started = time.perf_counter()
                    for i in range(0, len(x), batch):
                        model(x[i : i + batch])
                    rates.append(len(x) / (time.perf_counter() - started))
            out[f"{precision}_batch_{batch}"] = statistics.median(rates)
    return out


def ratios(median: dict[str, float]) -> dict[str, float]:
    """Epoch-time ratios against student-only training, for the modes that were measured."""
    out = {
        f"{m}_over_student": median[m] / median["student"]
        for m in ("cached", "online")
        if m in median
    }
    if "online" in median and "teacher_inference" in median:
        out["online_over_student_plus_teacher"] = median["online"] / (
            median["student"] + median["teacher_inference"]
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", required=True, help="teacher model file or run directory")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of all modes")
    p.add_argument("--epochs", type=int, default=2, help="measured epochs per process")
    p.add_argument(
        "--batches", type=int, default=100, help="batches per measured epoch (469 = a full epoch)"
    )
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="teacher precision"
    )
    p.add_argument("--views", type=int, default=None, help="cached views per sample (default: all)")
    p.add_argument("--work", default="runs/bench", help="where the cache is kept")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated subset of {','.join(MODES)} (student is always measured)",
    )
    p.add_argument("--mode", choices=(*MODES, "throughput"), help=argparse.SUPPRESS)  # internal
    args = p.parse_args()
    if args.mode == "throughput":
        print(json.dumps(teacher_throughput(args.teacher)))
        return 0
    if args.mode:
        print(json.dumps(measure(args)))
        return 0
    modes = ["student", *(m for m in args.modes.split(",") if m != "student")]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"--modes: unknown {', '.join(unknown)}; valid: {', '.join(MODES)}")

    base = [
        sys.executable,
        __file__,
        "--teacher",
        args.teacher,
        "--epochs",
        str(args.epochs),
        "--batches",
        str(args.batches),
        "--precision",
        args.precision,
        "--work",
        args.work,
    ]
    if args.views is not None:
        base += ["--views", str(args.views)]
    # Build the cache once, outside the timed rounds (its build time is reported separately).
    first = {"cache_ready_s": None, "cache_built": False, "cache_bytes": None}
    if "cached" in modes:
        first = json.loads(
            subprocess.run(
                [*base, "--mode", "cached"], capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            out = subprocess.run(
                [*base, "--mode", mode], capture_output=True, text=True, check=True
            )
            runs[mode].append(json.loads(out.stdout.splitlines()[-1]))
    median = {m: statistics.median(t for r in runs[m] for t in r["epoch_s"]) for m in modes}
    throughput = json.loads(
        subprocess.run(
            [*base, "--mode", "throughput"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[-1]
    )
    report = {
        **provenance("fmnist_kd.py"),
        "batches_per_epoch": args.batches,
        "teacher_precision": args.precision,
        "median_epoch_s": median,
        "peak_rss_mib": {m: max(r["peak_rss_mib"] for r in runs[m]) for m in modes},
        "cache_build_s": first["cache_ready_s"] if first["cache_built"] else None,
        "teacher_images_per_s": throughput,
        "cache_bytes": first["cache_bytes"],
        "ratios": ratios(median),
        "raw": runs,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
