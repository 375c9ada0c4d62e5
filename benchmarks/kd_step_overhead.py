"""What a cached distillation step costs over a student-only step, without the data pipeline.

``fmnist_kd.py`` times whole processes; its ratios carry process-to-process drift of this
shared machine (10% and more). This script builds both objectives of the FMNIST-KD workload in
one process, draws 100 batches once, and times the same batches through each, alternating
modes ``--rounds`` times: student-only, cached distillation, and cached distillation with the
loss's per-call input validation turned off. The data pipeline is timed the same way
(random-crop batches vs cached-view batches plus the cache lookup).

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
        w = build_workload(args.teacher, mode, args.work, precision="fp32", views=args.views)
        batches = [b for _, b in zip(range(args.batches), w.loader, strict=False)]
        setups[mode] = (w.objective, w.optimizer, batches, w.loader, w.cache)

    def steps(mode: str, validate: bool = True) -> float:
        objective, optimizer, batches, _, _ = setups[mode]
        if hasattr(objective, "loss_fn"):
            objective.loss_fn.validate = validate
        started = time.perf_counter()
        for b in batches:
            out = objective(b.inputs, b.targets, sample_ids=b.sample_ids, views=b.views)
            optimizer.zero_grad(set_to_none=True)
            out.loss.total.backward()
            optimizer.step()
        return time.perf_counter() - started

    def pipeline(mode: str, epoch: int) -> float:
        _, _, _, loader, cache = setups[mode]
        loader.set_epoch(epoch)
        started = time.perf_counter()
        for _, b in zip(range(args.batches), loader, strict=False):
            if cache is not None:
                cache.lookup(b.sample_ids, b.views)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {
        k: [] for k in ("student", "cached", "cached_no_validation", "pipeline_student", "pipeline_cached")
    }  # fmt: skip
    for r in range(args.rounds):
        times["student"].append(steps("student"))
        times["cached"].append(steps("cached"))
        times["cached_no_validation"].append(steps("cached", validate=False))
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
            "step_cached_no_validation_over_student": median["cached_no_validation"]
            / median["student"],
            "with_pipeline_cached_over_student": (median["cached"] + median["pipeline_cached"])
            / (median["student"] + median["pipeline_student"]),
        },
        "raw": times,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
