"""What a cached distillation step costs over a student-only step, without the data pipeline.

``fmnist_kd.py`` times whole processes; its ratios carry process-to-process drift of this
shared machine (10% and more). This script assembles both modes of the FMNIST-KD workload in
one process (``build_run``, as ``kdistill train`` does), draws 100 batches of each once, and
times ``Trainer.train_epoch`` over the same batches, alternating student-only and cached
distillation ``--rounds`` times. The data pipeline is timed the same way (random-crop batches
vs cached-view batches plus the cache lookup).

    python benchmarks/kd_step_overhead.py --teacher runs/fmnist-resnet20-teacher --work runs \
        --out benchmarks/results/kd_step_overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import provenance, publish
from fmnist_kd import build_workload  # the workload, built as the benchmark builds it

from kdistill.engine import Trainer


class Replay:
    """The same batches every epoch (the steps are timed without the data pipeline)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", required=True)
    p.add_argument("--work", default="runs/bench", help="where the teacher cache is kept")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out")
    args = p.parse_args()

    setups = {}
    for mode in ("student", "cached"):
        w = build_workload(
            args.teacher, mode, args.work, precision="fp32", views=args.views, batches=args.batches
        )
        loader = w.parts.train_loader
        replay = Replay([b for _, b in zip(range(args.batches), loader, strict=False)])
        trainer = Trainer(w.parts.objective, w.parts.optimizer_factory, replay, {}, w.parts.loop)
        setups[mode] = (trainer, loader, w.parts.cache)

    def steps(mode: str) -> float:
        trainer = setups[mode][0]
        started = time.perf_counter()
        trainer.train_epoch(0)
        return time.perf_counter() - started

    def pipeline(mode: str, epoch: int) -> float:
        _, loader, cache = setups[mode]
        loader.set_epoch(epoch)
        started = time.perf_counter()
        for _, b in zip(range(args.batches), loader, strict=False):
            if cache is not None:
                cache.lookup(b.sample_ids, b.views)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {
        k: [] for k in ("student", "cached", "pipeline_student", "pipeline_cached")
    }
    for r in range(args.rounds):
        times["student"].append(steps("student"))
        times["cached"].append(steps("cached"))
        times["pipeline_student"].append(pipeline("student", r))
        times["pipeline_cached"].append(pipeline("cached", r))
    median = {k: statistics.median(v) for k, v in times.items()}
    report = {
        **provenance("kd_step_overhead.py"),
        "batches": args.batches,
        "rounds": args.rounds,
        "median_s": median,
        "ratios": {
            "step_cached_over_student": median["cached"] / median["student"],
            "with_pipeline_cached_over_student": (median["cached"] + median["pipeline_cached"])
            / (median["student"] + median["pipeline_student"]),
        },
        "raw": times,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
