"""The demo on a busy machine: does kdistill's thread choice keep it near its quiet time?

PyTorch takes one thread per core whatever else runs; on a 2-core machine kept busy by other
processes that oversubscribes the cores and every parallel region waits. This script times
``kdistill demo`` quiet, then with BUSY background processes that each keep one core busy
(started and stopped by the script itself): with kdistill's default (threads chosen from the
cores and their load) and with ``--threads`` forced to the number of cores (PyTorch's default).

    python benchmarks/busy_demo.py --rounds 3 --busy 2 --out benchmarks/results/busy_demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import provenance, publish

SPIN = "while True:\n    pass\n"


def demo(threads: int | None, timeout: float) -> tuple[float, list[str]]:
    """Wall time of one ``kdistill demo`` and the thread choices its runs recorded."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kdistill", "demo", "-q", "--out", out]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"the demo failed: {done.stderr[-2000:]}")
        choices = sorted(
            {
                json.loads(p.read_text()).get("threads") or "?"
                for p in Path(out).glob("*/seed-*/summary.json")
            }
        )
    return elapsed, choices


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="demo runs per condition (median reported)"
    )
    p.add_argument("--busy", type=int, default=2, help="background processes, one core each")
    p.add_argument(
        "--forced-rounds",
        type=int,
        default=1,
        help="runs with --threads = cores under load (slow: minutes each)",
    )
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds before one demo run is given up"
    )
    p.add_argument("--out", help="write the result JSON here too")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    report = {**provenance("busy_demo.py"), "cores": cores, "busy_processes": args.busy}
    quiet = [demo(None, args.timeout) for _ in range(args.rounds)]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        time.sleep(2)  # they are running before the demo looks at the machine
        busy_auto = [demo(None, args.timeout) for _ in range(args.rounds)]
        busy_forced = []
        for _ in range(args.forced_rounds):
            try:
                busy_forced.append(demo(cores, args.timeout))
            except subprocess.TimeoutExpired:
                busy_forced.append((float("inf"), [f"gave up after {args.timeout:.0f} s"]))
    finally:
        for s in spinners:
            s.kill()

    def summary(runs):
        times = [t for t, _ in runs]
        return {
            "seconds": times,
            "median_s": statistics.median(times),
            "threads": sorted({c for _, cs in runs for c in cs}),
        }

    report["quiet"] = summary(quiet)
    report["busy_default"] = summary(busy_auto)
    report["busy_threads_forced_to_cores"] = summary(busy_forced)
    report["ratios"] = {
        "busy_default_over_quiet": report["busy_default"]["median_s"] / report["quiet"]["median_s"],
        "busy_forced_over_quiet": report["busy_threads_forced_to_cores"]["median_s"]
        / report["quiet"]["median_s"],
    }
    publish(report, args.out)


if __name__ == "__main__":
    main()
