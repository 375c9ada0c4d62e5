"""Multi-seed statistics: mean, std, best and worst, as published KD tables report them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from kdistill.record import RunRecord

# Metrics summarized over seeds when present in every run's summary.
AGGREGATED = (
    "test_top1",
    "best_test_top1",
    "test_top5",
    "test_ece",
    "test_agreement",
    "total_time_s",
)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; 0 for one run), best, worst and the values."""
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "best": max(vals),
        "worst": min(vals),
        "values": vals,
    }


def aggregate_runs(summaries: Sequence[RunRecord]) -> dict[str, Any]:
    """One record for several seeds of one config."""
    if not summaries:
        raise ValueError("aggregate_runs needs at least one run record")
    first = summaries[0]
    out: dict[str, Any] = {
        "name": first.get("name"),
        "config_hash": first.get("config_hash"),
        "mode": first.get("mode"),
        "arch": first.get("arch"),
        "dataset": first.get("dataset"),
        "params": first.get("params"),
        "size_bytes": first.get("size_bytes"),
        "seeds": [s.get("seed") for s in summaries],
        "run_dirs": [s.get("run_dir") for s in summaries],
    }
    for key in AGGREGATED:
        if all(s.get(key) is not None for s in summaries):
            out[key] = describe([s.get(key) for s in summaries])
    if first.get("teacher_test_top1") is not None:
        out["teacher_test_top1"] = first.get("teacher_test_top1")
    return out


def format_aggregate(agg: Mapping[str, Any]) -> str:
    """A one-line human summary of an aggregate's test top-1."""
    t = agg["test_top1"]
    return (
        f"{agg.get('name')}: test top-1 over {t['n']} seeds: mean {t['mean']:.2%} ± {t['std']:.2%} "
        f"(best {t['best']:.2%}, worst {t['worst']:.2%})"
    )
