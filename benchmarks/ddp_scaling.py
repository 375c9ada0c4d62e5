"""1 process vs N processes (DDP, gloo on CPU) on the same work: the FMNIST LeNet-5 recipe.

Every run has the same global batch, so the optimization is the same; what changes is how the
work is split. Runs alternate between process counts, ``--rounds`` times, and the median epoch
time of each count is reported with the ratio. On a 2-core machine both counts share the same
2 cores, so this measures DDP's overhead rather than a speed-up.

    python benchmarks/ddp_scaling.py --rounds 2 --epochs 2 --out benchmarks/results/ddp_scaling.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from common import provenance, publish


def one_run(nproc: int, epochs: int, work: Path, recipe: str) -> dict:
    out = work / f"n{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "kdistill", "train", recipe, "--epochs", str(epochs), "--out", str(out),
        "--name", "bench", "-q", "train.tensorboard=false", "train.measure_latency=false", "data.drop_last=true",
    ]  # fmt: skip
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    summary = json.loads((out / "bench" / "summary.json").read_text())
    return {"epoch_times_s": summary["epoch_times_s"], "test_top1": summary["test_top1"]}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--recipe", default="fashion-mnist/lenet5-scratch")
    p.add_argument("--work", default="runs/bench-ddp")
    p.add_argument("--out")
    args = p.parse_args()
    runs: dict[int, list[dict]] = {n: [] for n in args.nproc}
    for _ in range(args.rounds):
        for n in args.nproc:
            runs[n].append(one_run(n, args.epochs, Path(args.work), args.recipe))
    median = {
        n: statistics.median(t for r in runs[n] for t in r["epoch_times_s"]) for n in args.nproc
    }
    base = args.nproc[0]
    report = {
        **provenance("ddp_scaling.py"),
        "recipe": args.recipe,
        "median_epoch_s": median,
        "ratio_to_first": {n: median[n] / median[base] for n in args.nproc},
        "test_top1": {n: [r["test_top1"] for r in runs[n]] for n in args.nproc},
        "raw": runs,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
