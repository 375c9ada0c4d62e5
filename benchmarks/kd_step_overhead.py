"""What a cached distillation step costs over a student-only step, without the data pipeline.

``fmnist_kd.py`` times whole processes; its ratios carry process-to-process drift of this
shared machine (10% and more). This script assembles both modes of the FMNIST-KD workload in
one process (``build_run``, as ``kdistill train`` does), draws 100 batches of each once, and
times one training step (``Trainer.train_epoch`` over one batch) at a time, alternating the two
modes step by step, ``--rounds`` passes over the batches: drift of the machine then hits both
modes alike, and the ratio of the median steps is what distillation costs per step. The data
pipeline is timed the same way (random-crop batches vs cached-view batches plus the cache
lookup).

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
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()

    setups = {}
    for mode in ("student", "cached"):
        w = build_workload(
            args.teacher, mode, args.work, precision="fp32", views=args.views, batches=args.batches
        )
        loader = w.parts.train_loader
        batches = [b for _, b in zip(range(args.batches), loader, strict=False)]
        one = Replay(batches[:1])
        trainer = Trainer(w.parts.objective, w.parts.optimizer_factory, one, {}, w.parts.loop)
        setups[mode] = (trainer, one, batches, loader, w.parts.cache)

    def step(mode: str, i: int) -> float:
        trainer, one, batches, _, _ = setups[mode]
        one.batches[0] = batches[i]
        started = time.perf_counter()
        trainer.train_epoch(0)
        return time.perf_counter() - started

    def pipeline(mode: str, epoch: int) -> list[float]:
        _, _, _, loader, cache = setups[mode]
        loader.set_epoch(epoch)
        times, it = [], iter(loader)
        for _ in range(args.batches):
            started = time.perf_counter()
            b = next(it)
            if cache is not None:
                cache.lookup(b.sample_ids, b.views)
            times.append(time.perf_counter() - started)
        return times

    times: dict[str, list[float]] = {
        k: [] for k in ("student", "cached", "pipeline_student", "pipeline_cached")
    }
    for r in range(args.rounds):
        for i in range(args.batches):
            for mode in ("student", "cached"):
                times[mode].append(step(mode, i))
        times["pipeline_student"] += pipeline("student", r)
        times["pipeline_cached"] += pipeline("cached", r)
    median_ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    report = {
        **provenance("kd_step_overhead.py"),
        "batches": args.batches,
        "rounds": args.rounds,
        "median_ms_per_step": median_ms,
        "ratios": {
            "step_cached_over_student": median_ms["cached"] / median_ms["student"],
            "with_pipeline_cached_over_student": (
                median_ms["cached"] + median_ms["pipeline_cached"]
            )
            / (median_ms["student"] + median_ms["pipeline_student"]),
        },
        "quartiles_ms": {
            k: [1000 * q for q in statistics.quantiles(v, n=4)] for k, v in times.items()
        },
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
