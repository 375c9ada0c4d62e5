"""When does distillation kill the student, and does kdistill's collapse check catch it early?

Trains the FMNIST-KD workload's LeNet-5 student with the *stock* recipe (T=4, alpha 0.1,
beta 0.9, no gradient clipping: the setting that collapsed one seed of three in the probe) and
with the shipped recipe (``fashion-mnist/lenet5-distill``: clip 2, alpha = beta = 0.5), several
seeds each, the teacher's outputs read from the cache. ``train.on_collapse: warn`` lets every
run finish, so that the whole trajectory is recorded; then each epoch is judged offline with
the rule the default (``stop``) applies: at which epoch would the run have stopped, and was the
student really lost (its final accuracy)?

    python benchmarks/fmnist_collapse.py --teacher runs/fmnist-resnet20-teacher --seeds 0-4 \
        --work runs --out benchmarks/results/fmnist_collapse.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from common import provenance, publish

RECIPES = {
    "stock": ["kd.alpha=0.1", "kd.beta=0.9", "optim.grad_clip=null"],
    "shipped": [],
}


def train(recipe: str, teacher: str, seed: int, work: str, epochs: int) -> dict:
    """One seed of a recipe; a run that kdistill stops (NaN loss) is an outcome too."""
    cmd = [
        sys.executable, "-m", "kdistill", "train", "fashion-mnist/lenet5-distill",
        f"kd.teachers.0.checkpoint={teacher}", *RECIPES[recipe], "train.on_collapse=warn",
        f"train.epochs={epochs}", "train.tensorboard=false", "train.threads=2",
        "--name", f"collapse-{recipe}", "--seed", str(seed), "--out", work, "-q",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    error = done.stderr.strip().splitlines()[-1] if done.returncode else None
    ratio = re.search(r"gradient is ([0-9.]+)x", done.stdout)
    return {"error": error, "kd_gradient_ratio": float(ratio.group(1)) if ratio else None}


def judge(run_dir: Path) -> dict:
    """Each epoch judged offline with the rule of the default ``train.on_collapse: stop``."""
    from kdistill.engine.callbacks import collapse_reason

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stopped = next(
        (
            h["epoch"] + 1
            for h in history
            if collapse_reason(h["test"], 10, final=h["epoch"] + 1 == len(history))
        ),
        None,
    )
    return {
        "test_top1_per_epoch": [round(h["test"]["top1"], 4) for h in history],
        "test_loss_per_epoch": [round(h["test"]["loss"], 3) for h in history],
        "top_class_share_per_epoch": [round(h["test"]["top_class_share"], 3) for h in history],
        "default_stops_after_epoch": stopped,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", required=True, help="teacher run directory or model file")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--work", default="runs", help="run tree (the teacher cache is shared there)")
    p.add_argument("--out")
    args = p.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    report = {**provenance("fmnist_collapse.py"), "recipes": {}}
    for recipe in RECIPES:
        runs = []
        for seed in seeds:
            outcome = {"seed": seed, **train(recipe, args.teacher, seed, args.work, args.epochs)}
            (run_dir,) = Path(args.work).glob(f"collapse-{recipe}-*/seed-{seed}")
            outcome.update(judge(run_dir))
            outcome["final_test_top1"] = (
                outcome["test_top1_per_epoch"][-1] if outcome["test_top1_per_epoch"] else None
            )
            runs.append(outcome)
        finished = [r["final_test_top1"] for r in runs if r["error"] is None]
        report["recipes"][recipe] = {
            "overrides": RECIPES[recipe],
            "runs": runs,
            "stopped_by_nan": sum(r["error"] is not None for r in runs),
            "judged_collapsed": sum(r["default_stops_after_epoch"] is not None for r in runs),
            "finished_test_top1_mean": statistics.fmean(finished) if finished else None,
            "finished_test_top1_std": statistics.stdev(finished) if len(finished) > 1 else None,
        }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
