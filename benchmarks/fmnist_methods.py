"""Distillation methods compared on Fashion-MNIST under one budget (docs/methods.md).

Teacher: the shipped ResNet-20 (``fashion-mnist/resnet20-teacher``). Students: ResNet-8 (the
teacher's stage layout, so every feature method has natural layer pairs) and LeNet-5. Every run
uses the ``fashion-mnist/lenet5-distill`` budget (SGD lr 0.05, Nesterov, cosine, gradient
clipping at 2, batch 128, crop + flip, 10 epochs) with the teacher online, and each method
with its paper's default weights (``kdistill methods``); feature methods add their term to the
labels' cross-entropy at weight 1, as CRD's comparison does.

Two sub-commands:

``run`` trains every (student, method, seed) as its own ``kdistill train`` process, ``--jobs``
at a time (on one GPU: many small processes keep it busy), seeds in order so that a deadline
leaves whole seeds; each finished run appends a row to ``<out>/rows.jsonl``::

    python benchmarks/fmnist_methods.py run --root /usr/share/datasets/fashion-mnist \
        --out runs/methods --seeds 0,1,2 --jobs 14 --deadline 430

``timing`` measures, on this machine, each method's training step relative to plain KD's:
steps of all methods alternate over the same batches (machine drift hits them alike) and the
medians are compared (ResNet-8 student, ResNet-20 teacher, batch 128)::

    python benchmarks/fmnist_methods.py timing --teacher runs/methods/teacher \
        --out benchmarks/results/fmnist_methods_timing.json

``summarize`` turns the rows into the table of docs/methods.md and a figure::

    python benchmarks/fmnist_methods.py summarize benchmarks/results/fmnist_methods.jsonl \
        --timing benchmarks/results/fmnist_methods_timing.json --figure docs/methods-fmnist.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ("scratch", "kd", "dkd", "dist", "fitnet", "at", "rkd", "pkt", "sp", "crd")
STUDENTS = ("resnet8_cifar", "lenet5")

# Layer pairs: ResNet-8 and ResNet-20 share stage widths and resolutions (16x28x28, 32x14x14,
# 64x7x7, pooled 64); LeNet-5's maps are 6x14x14 (after its first pooling) and 16x5x5, its
# embedding 84-d.
PAIRS = {
    "resnet8_cifar": {
        "fitnet": [("layer2", "layer2")],
        "at": [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")],
        "sp": [("layer3", "layer3")],
        "embedding": [("pool", "pool")],
    },
    "lenet5": {
        "fitnet": [("features.2", "layer2")],
        "at": [("features.2", "layer2")],
        "sp": [("features.5", "layer3")],
        "embedding": [("classifier.4", "pool")],
    },
}
# DKD warms up over 20 of the paper's 240 epochs; over 10 epochs that is about 1: 2 here.
ARGS = {"dkd": {"warmup_epochs": 2}}


def method_overrides(student: str, method: str) -> list[str]:
    """The overrides of the shared recipe that make this (student, method) run."""
    base = [f"model.arch={student}", "model.args={}", "kd.teacher_cache.enabled=false"]
    if method == "scratch":
        return [*base, "kd=null"]
    if method == "kd":  # Hinton's weights as the papers' comparisons run them
        return [*base, "kd.alpha=0.1", "kd.beta=null", "kd.temperature=4.0"]
    entry: dict = {"name": method}
    pairs = PAIRS[student].get(method) or (
        PAIRS[student]["embedding"] if method in ("rkd", "pkt", "crd") else None
    )
    if pairs:
        entry["pairs"] = [{"student": s, "teacher": t} for s, t in pairs]
    if method in ARGS:
        entry["args"] = ARGS[method]
    return [*base, "kd.alpha=1.0", "kd.beta=null", f"kd.methods=[{json.dumps(entry)}]"]


def run_one(args: argparse.Namespace, teacher: Path, student: str, method: str, seed: int) -> dict:
    name = f"{student}-{method}"
    cmd = [
        sys.executable, "-m", "kdistill.cli.main", "train", "fashion-mnist/lenet5-distill",
        f"name={name}", f"data.root={args.root}", f"out_dir={args.out}/runs",
        f"kd.teachers.0.checkpoint={teacher}", "train.threads=1", "train.tensorboard=false",
        "train.measure_latency=false", f"train.epochs={args.epochs}", f"train.seed={seed}",
        "train.on_collapse=warn", "-q",
        *method_overrides(student, method),
    ]  # fmt: skip
    if method == "scratch":
        cmd.remove(f"kd.teachers.0.checkpoint={teacher}")
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"student": student, "method": method, "seed": seed, "wall_s": time.time() - started}
    if proc.returncode != 0:
        return {**row, "status": "failed", "error": (proc.stderr or proc.stdout)[-2000:]}
    summaries = sorted(Path(args.out, "runs").glob(f"{name}-*/seed-{seed}/summary.json"))
    record = json.loads(summaries[-1].read_text())
    return {
        **row,
        "status": "ok",
        "test_top1": record["test_top1"],
        "epoch_time_median_s": statistics.median(record["epoch_times_s"]),
        "warnings": record.get("warnings", []),
    }


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    started = time.time()
    teacher = Path(args.teacher) if args.teacher else None
    if teacher is None:
        subprocess.run(
            [sys.executable, "-m", "kdistill.cli.main", "train", "fashion-mnist/resnet20-teacher",
             f"data.root={args.root}", f"out_dir={out}", "name=teacher", "-q",
             "train.tensorboard=false", f"train.epochs={args.teacher_epochs}"],
            check=True,
        )  # fmt: skip
        teacher = next(out.glob("teacher-*/seed-0"))
        print(f"teacher trained in {time.time() - started:.0f} s", flush=True)
    record = json.loads((teacher / "summary.json").read_text())
    (out / "teacher.json").write_text(json.dumps(record, indent=1))
    jobs = [
        (student, method, seed)
        for seed in args.seeds
        for student in args.students
        for method in args.methods
    ]

    def work(job: tuple[str, str, int]) -> None:
        if time.time() - started > args.deadline:
            return
        row = run_one(args, teacher, *job)
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{time.time() - started:5.0f}s {row['student']:14s} {row['method']:8s} seed "
            f"{row['seed']}: {row.get('test_top1', row['status'])}",
            flush=True,
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, jobs))
    return 0


def cmd_timing(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from common import provenance, publish
    from kd_step_overhead import Replay

    from kdistill.config import load_config
    from kdistill.engine import Trainer
    from kdistill.experiment import build_run

    setups = {}
    for method in args.methods:
        cfg = load_config(
            "fashion-mnist/lenet5-distill",
            [
                f"data.root={args.root}", f"kd.teachers.0.checkpoint={args.teacher}",
                "train.tensorboard=false", "out_dir=/tmp/kdistill-methods-timing",
                *method_overrides(args.student, method),
            ],
        )  # fmt: skip
        parts = build_run(cfg, log=lambda _: None, progress=False)
        batches = [b for _, b in zip(range(args.batches), parts.train_loader, strict=False)]
        one = Replay(batches[:1])
        trainer = Trainer(parts.objective, parts.optimizer_factory, one, {}, parts.loop)
        setups[method] = (trainer, one, batches)
    times: dict[str, list[float]] = {m: [] for m in setups}
    torch.manual_seed(0)
    order = random.Random(0)
    for _ in range(args.rounds):
        for i in range(args.batches):
            # a new order for every batch: no method always follows the same one (a step
            # right after CRD's large memory traffic finds the caches cold)
            for method in order.sample(list(setups), len(setups)):
                trainer, one, batches = setups[method]
                one.batches[0] = batches[i]
                t0 = time.perf_counter()
                trainer.train_epoch(0)
                times[method].append(time.perf_counter() - t0)
    medians = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "student": args.student,
        "batch_size": 128,
        "step_median_s": medians,
        "relative_to_kd": {m: medians[m] / medians["kd"] for m in medians},
        "steps_per_method": len(times["kd"]),
        **provenance("fmnist_methods.py"),
    }
    publish(result, args.out)
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    rows = [json.loads(line) for f in args.rows for line in Path(f).read_text().splitlines()]
    timing = json.loads(Path(args.timing).read_text())["relative_to_kd"] if args.timing else {}
    lines = [
        "| student | method | mean ± std | worst seed | seeds | step time vs KD (CPU, ResNet-8) | vs KD | vs scratch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for student in STUDENTS:
        accs = {}
        for method in METHODS:
            ok = [r["test_top1"] * 100 for r in rows
                  if r["student"] == student and r["method"] == method and r["status"] == "ok"]  # fmt: skip
            if ok:
                accs[method] = ok
        # Seed noise: the within-config standard deviation pooled over all of this student's
        # configs (two or three seeds give a poor estimate per config); a difference of two
        # means of n seeds is beyond noise when it exceeds twice its standard error.
        residuals = [(v - statistics.mean(vs)) ** 2 for vs in accs.values() for v in vs]
        dof = sum(len(vs) - 1 for vs in accs.values())
        pooled = (sum(residuals) / dof) ** 0.5 if dof else 0.0
        for method, values in accs.items():
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[(student, method)] = (mean, std)

            def verdict(other: str, method: str = method, values: list = values,
                        accs: dict = accs, pooled: float = pooled) -> str:  # fmt: skip
                if other not in accs or other == method:
                    return ""
                diff = statistics.mean(values) - statistics.mean(accs[other])
                error = pooled * (1 / len(values) + 1 / len(accs[other])) ** 0.5
                if abs(diff) <= 2 * error:
                    return f"within noise ({diff:+.2f})"
                return f"{'better' if diff > 0 else 'worse'} ({diff:+.2f})"

            rel = timing.get(method)
            lines.append(
                f"| {student} | {method} | {mean:.2f} ± {std:.2f} | {min(values):.2f} | "
                f"{len(values)} | {'' if rel is None else f'{rel:.2f}x'} | {verdict('kd')} | "
                f"{verdict('scratch')} |"
            )
        lines.append(f"| {student} | (pooled seed std) | {pooled:.2f} | | | | | |")
    print("\n".join(lines))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for student, color in zip(STUDENTS, ("C0", "C1"), strict=True):
            for (s, method), (mean, std) in summary.items():
                if s != student:
                    continue
                x = timing.get(method)
                if x is None:
                    continue
                ax.errorbar(x, mean, yerr=std, fmt="o", color=color, capsize=3)
                # the labels of the crowd at 1.0x take turns on each side of their point
                offset = ((5, 2), (-30, 2), (5, -10), (-30, -10))[METHODS.index(method) % 4]
                ax.annotate(
                    method, (x, mean), textcoords="offset points", xytext=offset, fontsize=8
                )
        ax.set_xlabel("training step time relative to KD (2-core CPU, ResNet-8 student)")
        ax.set_ylabel("test top-1 (%), mean and std over seeds")
        ax.set_title("Fashion-MNIST, ResNet-20 teacher: ResNet-8 (blue) and LeNet-5 (orange)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", required=True, help="Fashion-MNIST IDX directory")
    r.add_argument("--out", required=True)
    r.add_argument("--teacher", help="a trained teacher run (else one is trained)")
    r.add_argument("--teacher-epochs", type=int, default=15)
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    r.add_argument("--students", type=lambda s: s.split(","), default=list(STUDENTS))
    r.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    r.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    r.add_argument("--deadline", type=float, default=1e9, help="start no run after this many s")
    t = sub.add_parser("timing")
    t.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    t.add_argument("--teacher", required=True)
    t.add_argument("--student", default="resnet8_cifar")
    t.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    t.add_argument("--batches", type=int, default=10)
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--out")
    s = sub.add_parser("summarize")
    s.add_argument("rows", nargs="+")
    s.add_argument("--timing")
    s.add_argument("--figure")
    args = p.parse_args()
    return {"run": cmd_run, "timing": cmd_timing, "summarize": cmd_summarize}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
