"""Does a cached distillation run start as fast as a student-only run? Quiet and busy machine.

Workload (issue 24): the first 12,000 Fashion-MNIST training images (all 10,000 test images),
LeNet-5 student, batch 128, crop (pad 2) + flip, SGD; the distilled run reads the outputs of a
torchvision ResNet-18 teacher (trained here for one epoch on the same images; its accuracy does
not matter for timing) from a teacher cache built before timing starts.

Each measurement is one ``kdistill train`` process, timed from outside (what a user waits
for: imports, data, models, the teacher's check, training, the final files). The two modes are
alternated in pairs, so drift of this shared machine hits both alike; the report gives the
medians and the median of the per-pair differences. Then the same while BUSY background
processes each keep one core spinning (started and stopped by the script), where the epoch
time ratio (cached / student-only, from the runs' own records) is the figure of interest.

    python benchmarks/cached_startup.py --rounds 5 --busy 2 --out benchmarks/results/cached_startup.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import provenance, publish

SPIN = "while True:\n    pass\n"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TRAIN_PREFIX = 12_000


def write_prefix(source: Path, target: Path, train: int) -> None:
    """IDX files holding the first ``train`` training samples and the whole test split."""
    target.mkdir(parents=True, exist_ok=True)
    for stem, limit in (("train", train), ("t10k", None)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            with gzip.open(source / f"{stem}-{kind}.gz") as f:
                data = f.read()
            ndim = data[3]
            dims = list(struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim]))
            per_sample = 1
            for d in dims[1:]:
                per_sample *= d
            if limit is not None:
                dims[0] = min(limit, dims[0])
            header = data[:4] + struct.pack(">" + "I" * ndim, *dims)
            body = data[4 + 4 * ndim : 4 + 4 * ndim + dims[0] * per_sample]
            with gzip.open(target / f"{stem}-{kind}.gz", "wb") as f:
                f.write(header + body)


def config_text(name: str, out: Path, root: Path, epochs: int, teacher: str | None) -> str:
    kd = (
        f"kd: {{teachers: [{{checkpoint: {teacher}}}], temperature: 4.0, alpha: 0.1, beta: 0.9, "
        "teacher_cache: {enabled: true}}\n"
        if teacher
        else ""
    )
    return (
        f"name: {name}\nout_dir: {out}\n"
        f"data: {{name: fashion-mnist, root: {root}, batch_size: 128, "
        "augment: {crop_padding: 2, hflip: true}}\n"
        "model: {arch: lenet5}\n"
        f"{kd}"
        "optim: {name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4, "
        "grad_clip: 2.0}\n"
        f"train: {{epochs: {epochs}, tensorboard: false}}\n"
    )


def train(config: Path, timeout: float) -> dict[str, Any]:
    """One ``kdistill train`` process: its wall time and what its record says."""
    cmd = [sys.executable, "-m", "kdistill", "train", str(config), "--force", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = [ln for ln in done.stdout.splitlines() if ": test top-1 " in ln][-1]
    record = json.loads((Path(line.split(":")[0]) / "summary.json").read_text())
    return {
        "wall_s": wall,
        "in_run_s": record["total_time_s"],
        "epoch_s": statistics.median(record["epoch_times_s"]),
        "threads": record.get("threads"),
        "log": [ln for ln in done.stdout.splitlines() if ln.startswith(("teacher", "kd."))],
    }


def alternate(configs: dict[str, Path], rounds: int, timeout: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for mode in order:
            runs[mode].append(train(configs[mode], timeout))
    pairs = list(zip(runs["student"], runs["cached"], strict=True))
    out: dict[str, Any] = {
        mode: {
            "wall_s": [round(m["wall_s"], 3) for m in ms],
            "median_wall_s": statistics.median(m["wall_s"] for m in ms),
            "median_in_run_s": statistics.median(m["in_run_s"] for m in ms),
            "median_epoch_s": statistics.median(m["epoch_s"] for m in ms),
            "threads": sorted({m["threads"] or "?" for m in ms}),
        }
        for mode, ms in runs.items()
    }
    out["cached"]["log"] = runs["cached"][-1]["log"]
    out["median_pair_difference_s"] = statistics.median(c["wall_s"] - s["wall_s"] for s, c in pairs)
    out["median_pair_epoch_ratio"] = statistics.median(
        c["epoch_s"] / s["epoch_s"] for s, c in pairs
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5, help="alternated pairs per condition")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each timed run")
    p.add_argument(
        "--busy", type=int, default=2, help="background processes, one core each (0: quiet only)"
    )
    p.add_argument("--fashion-mnist", default=FASHION_MNIST, help="the IDX files' directory")
    p.add_argument(
        "--work", help="keep the data, teacher and runs here (default: a temporary directory)"
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds before one run is given up")
    p.add_argument("--out", help="write the result JSON here too")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        root = work / "fashion-mnist-12k"
        if not root.is_dir():
            write_prefix(Path(args.fashion_mnist), root, TRAIN_PREFIX)
        runs = work / "runs"
        teacher_cfg = work / "teacher.yaml"
        teacher_cfg.write_text(
            config_text("teacher", runs, root, 1, None).replace("arch: lenet5", "arch: resnet18")
        )
        teacher_dir = runs / "teacher"
        if not (teacher_dir / "summary.json").is_file():
            train(teacher_cfg, args.timeout)
        configs = {
            "student": work / "student.yaml",
            "cached": work / "cached.yaml",
        }
        configs["student"].write_text(config_text("student", runs, root, args.epochs, None))
        configs["cached"].write_text(
            config_text("cached", runs, root, args.epochs, str(teacher_dir))
        )
        built = train(configs["cached"], args.timeout)  # builds the cache: not timed
        report: dict[str, Any] = {
            **provenance("cached_startup.py"),
            "workload": f"Fashion-MNIST first {TRAIN_PREFIX:,} training images, 10,000 test, "
            f"LeNet-5, batch 128, {args.epochs} epochs; ResNet-18 teacher, cached",
            "cache_build_run_wall_s": built["wall_s"],
            "quiet": alternate(configs, args.rounds, args.timeout),
        }
        if args.busy:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
            try:
                time.sleep(2)  # they are running before a run looks at the machine
                report[f"busy_{args.busy}"] = alternate(configs, args.rounds, args.timeout)
            finally:
                for s in spinners:
                    s.kill()
    publish(report, args.out)


if __name__ == "__main__":
    main()
