"""``kdistill demo``: a real distillation on the bundled digits, with an honest comparison."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kdistill.cli.commands import add_threads_flag

if TYPE_CHECKING:  # pragma: no cover
    from kdistill.record import RunRecord

DEMO_RECIPES = ("digits/teacher", "digits/scratch", "digits/distill")
# kdistill demo lm: a byte-level GPT teacher and two GPT students on CPython's language reference
LM_RECIPES = ("pydocs/gpt-teacher", "pydocs/gpt-scratch", "pydocs/gpt-distill")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a teacher, a scratch student and a distilled student on bundled data",
        description=(
            "digits (the default): trains the shipped recipes digits/teacher (LeNet-5), "
            "digits/scratch and digits/distill (the same small MLP and budget, without and with "
            "the teacher), then compares them; under a minute on 2 CPU cores. lm: the same for "
            "language models on the Python language reference that ships with CPython "
            "(pydocs/gpt-teacher, pydocs/gpt-scratch, pydocs/gpt-distill: byte-level GPTs), "
            "compared by test perplexity; a few minutes. Nothing is downloaded."
        ),
    )
    p.add_argument(
        "which", nargs="?", choices=("digits", "lm"), default="digits", help="which demo"
    )
    p.add_argument("--out", default="runs/demo", help="directory for the three run directories")
    p.add_argument("--seed", type=int, default=0, help="training seed of the two students")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def demo_configs(out: str, seed: int = 0, recipes: tuple[str, ...] = DEMO_RECIPES) -> list:
    """The three run configs of the demo, from the shipped recipes."""
    from pathlib import Path

    from kdistill.config import load_config

    teacher_recipe, scratch_recipe, distill_recipe = recipes
    teacher = load_config(teacher_recipe, values={"out_dir": out})
    scratch = load_config(scratch_recipe, values={"out_dir": out, "train.seed": seed})
    distill = load_config(
        distill_recipe,
        values={
            "out_dir": out,
            "train.seed": seed,
            "kd.teachers.0.checkpoint": str(Path(out) / teacher.name),
        },
    )
    return [teacher, scratch, distill]


def handle(args: argparse.Namespace) -> int:
    from kdistill.experiment import run

    language = args.which == "lm"
    recipes = LM_RECIPES if language else DEMO_RECIPES
    results = []
    for role, cfg in zip(
        ("teacher", "scratch student", "distilled student"),
        demo_configs(args.out, args.seed, recipes),
    ):
        print(f"== {role}: {cfg.name} ({cfg.model.arch}, {cfg.train.epochs} epochs)")
        log = quiet_log if args.quiet else print
        result = run(cfg, force=True, progress=not args.quiet, log=log, threads=args.threads)
        results.append((role, result.record))
    print()
    print(format_lm_table(results) if language else format_table(results))
    print()
    print(
        lm_verdict(*(r for _, r in results)) if language else verdict(results[1][1], results[2][1])
    )
    print(f"run directories: {', '.join(r.run_dir for _, r in results)}")
    return 0


def format_table(results: list) -> str:
    header = f"{'model':20s} {'arch':8s} {'params':>8s} {'size':>9s} {'MACs':>9s} {'test top-1':>10s} {'time':>7s}"
    lines = [header, "-" * len(header)]
    for role, r in results:
        lines.append(
            f"{role:20s} {r.arch:8s} {r.params:>8,d} {r.size_bytes / 1024:>7.1f}KB "
            f"{r.macs:>9,d} {r.test_top1:>10.2%} {r.total_time_s:>6.1f}s"
        )
    return "\n".join(lines)


def verdict(scratch: RunRecord, distilled: RunRecord) -> str:
    """One honest sentence about the effect of distillation, with the weight of one test image."""
    delta = distilled.test_top1 - scratch.test_top1
    if abs(delta) < 1e-12:
        effect = "left the student's test top-1 unchanged"
    else:
        direction = "raised" if delta > 0 else "lowered"
        effect = f"{direction} the student's test top-1 by {abs(delta) * 100:.2f} points"
    return (
        f"Distillation {effect} ({scratch.test_top1:.2%} -> {distilled.test_top1:.2%}; "
        f"teacher {distilled.teacher_test_top1:.2%}). One seed, {distilled.test_samples} test "
        f"images: one image is {1 / distilled.test_samples:.2%}. For a verdict that accounts "
        "for seed noise, run the recipes with kdistill train --seeds 0,1,2."
    )


def format_lm_table(results: list) -> str:
    header = (
        f"{'model':20s} {'arch':10s} {'params':>10s} {'test perplexity':>16s} "
        f"{'bits/byte':>9s} {'tokens/s':>9s} {'time':>7s}"
    )
    lines = [header, "-" * len(header)]
    for role, r in results:
        lines.append(
            f"{role:20s} {r.arch:10s} {r.params:>10,d} {r.test_perplexity:>16.2f} "
            f"{r.test_bits_per_byte:>9.3f} {r.tokens_per_s:>9,.0f} {r.total_time_s:>6.1f}s"
        )
    return "\n".join(lines)


def lm_verdict(teacher: RunRecord, scratch: RunRecord, distilled: RunRecord) -> str:
    """How much of the gap in log-perplexity between the scratch student and the teacher the
    distilled student closed (the same student and budget as scratch)."""
    import math

    gap = math.log(scratch.test_perplexity) - math.log(teacher.test_perplexity)
    closed = math.log(scratch.test_perplexity) - math.log(distilled.test_perplexity)
    share = f"{closed / gap:.0%} of the gap in log-perplexity to the teacher" if gap > 0 else ""
    direction = "lowered" if closed > 0 else "raised"
    return (
        f"Distillation {direction} the student's test perplexity from "
        f"{scratch.test_perplexity:.2f} to {distilled.test_perplexity:.2f} (teacher "
        f"{teacher.test_perplexity:.2f}){': ' + share if share and closed > 0 else ''}. One "
        f"seed, {distilled.test_tokens:,} test tokens; kdistill train pydocs/gpt-distill --seeds "
        "0,1,2 (and pydocs/gpt-scratch) for a verdict that accounts for seed noise."
    )


def quiet_log(message: str) -> None:
    """``--quiet``: no per-epoch lines, but warnings still reach the user."""
    if message.startswith("WARNING"):
        print(message)
