"""``kdistill train``: one config (YAML, flags, overrides), one or more seeds."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kdistill.cli.commands import (
    UserError,
    parse_seeds,
    resolve_config_path,
    split_config_and_overrides,
)

# Distiller-compatible and common flags -> the config key each one sets.
FLAG_KEYS: dict[str, str] = {
    "arch": "model.arch",
    "dataset": "data.name",
    "data_root": "data.root",
    "epochs": "train.epochs",
    "lr": "optim.lr",
    "batch_size": "data.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "name": "name",
    "out": "out_dir",
    "kd_teacher": "kd.teachers.0.arch",
    "kd_resume": "kd.teachers.0.checkpoint",
    "kd_temperature": "kd.temperature",
    "kd_distill_wt": "kd.beta",
    "kd_student_wt": "kd.alpha",
    "kd_teacher_wt": "kd.teacher_weight",
    "kd_start_epoch": "kd.start_epoch",
}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and other verbs that build a run config."""
    g = p.add_argument_group("common settings (each sets the config key in brackets)")
    g.add_argument("--arch", "-a", help="student architecture [model.arch]")
    g.add_argument("--dataset", help="dataset name [data.name]")
    g.add_argument("--data-root", help="dataset location [data.root]")
    g.add_argument("--epochs", type=int, help="[train.epochs]")
    g.add_argument("--lr", type=float, help="peak learning rate [optim.lr]")
    g.add_argument("-b", "--batch-size", type=int, help="[data.batch_size]")
    g.add_argument("--seed", type=int, help="[train.seed]")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N [train.device]")
    g.add_argument("--name", help="run name [name]")
    g.add_argument("--out", help="directory of run directories [out_dir]")
    g.add_argument(
        "--trust-code",
        action="store_true",
        help="let model files (teachers, model.checkpoint) name import-path architectures "
        "that this config does not write itself: that imports and runs their code",
    )
    kd = p.add_argument_group("knowledge distillation (Distiller-compatible)")
    kd.add_argument(
        "--kd-teacher", metavar="ARCH", help="teacher architecture [kd.teachers.0.arch]"
    )
    kd.add_argument(
        "--kd-resume", metavar="PATH", help="teacher checkpoint [kd.teachers.0.checkpoint]"
    )
    kd.add_argument(
        "--kd-temperature", "--kd-temp", type=float, metavar="T", help="[kd.temperature]"
    )
    kd.add_argument(
        "--kd-distill-wt",
        "--kd-dw",
        type=float,
        metavar="BETA",
        help="distillation loss weight [kd.beta]",
    )
    kd.add_argument(
        "--kd-student-wt",
        "--kd-sw",
        type=float,
        metavar="ALPHA",
        help="student loss weight [kd.alpha]",
    )
    kd.add_argument(
        "--kd-teacher-wt",
        "--kd-tw",
        type=float,
        metavar="W",
        help="teacher loss weight, trains it jointly [kd.teacher_weight]",
    )
    kd.add_argument(
        "--kd-start-epoch",
        type=int,
        metavar="E",
        help="first epoch with distillation [kd.start_epoch]",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model: a teacher, a scratch student or a distilled student",
        description=(
            "Train from a YAML config (a path, or a shipped recipe such as digits/distill), "
            "then flags, then key=value overrides (later wins), e.g.\n"
            "  kdistill train digits/distill kd.temperature=2 optim.lr=0.1\n"
            "  kdistill train --dataset digits --arch mlp --kd-resume runs/demo/digits-teacher --kd-temp 4 --kd-dw 0.9 --kd-sw 0.1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "items", nargs="*", metavar="CONFIG|KEY=VALUE", help="config file or recipe, then overrides"
    )
    add_run_flags(p)
    run = p.add_argument_group("run control")
    run.add_argument("--seeds", help="train one run per seed and aggregate, e.g. 0,1,2 or 0-4")
    run.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    run.add_argument(
        "--force", action="store_true", help="delete an existing run of this config and start over"
    )
    run.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bars; one line per epoch"
    )
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel on N processes of this machine (launches torchrun --standalone)",
    )
    p.set_defaults(handler=handle)


def build_config(args: argparse.Namespace) -> Any:
    """The run config from ``CONFIG``, flags and overrides (in that order of precedence)."""
    from kdistill.config import RunConfig, apply_overrides, apply_values, from_dict
    from kdistill.config.loader import read_yaml

    config, overrides = split_config_and_overrides(args.items)
    cfg = from_dict(RunConfig, read_yaml(resolve_config_path(config))) if config else RunConfig()
    values = {
        key: getattr(args, dest)
        for dest, key in FLAG_KEYS.items()
        if getattr(args, dest, None) is not None
    }
    if values:
        cfg = apply_values(cfg, values)
    return apply_overrides(cfg, overrides)


def launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under ``torchrun --standalone --nproc-per-node N``."""
    import subprocess
    import sys

    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    argv, skip = [], False
    for item in args.raw_argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "kdistill",
        *argv,
    ]
    print("launching: " + " ".join(cmd[1:]), flush=True)
    returncode = subprocess.run(cmd, check=False).returncode
    if returncode != 0:
        # Said here, by the launcher, because a surviving process may be stopped by torchrun
        # before it can say anything itself.
        print(
            f"kdistill: the distributed run failed (torchrun exit status {returncode}); the error "
            "of the process that failed is above. Checkpoints are written atomically, so the last "
            "complete one is intact: continue with --resume.",
            file=sys.stderr,
            flush=True,
        )
    return returncode


def handle(args: argparse.Namespace) -> int:
    from kdistill.engine.distributed import launched_by_torchrun

    if args.nproc is not None and not launched_by_torchrun():
        return launch_torchrun(args)
    from kdistill.config import apply_values
    from kdistill.experiment import group_dir, run, run_dir_for
    from kdistill.reporting.aggregate import aggregate_runs, format_aggregate

    cfg = build_config(args)
    seeds = parse_seeds(args.seeds) if args.seeds else [cfg.train.seed]
    if args.seeds and args.seed is not None:
        raise UserError("give --seed or --seeds, not both")
    summaries = []
    for seed in seeds:
        seed_cfg = apply_values(cfg, {"train.seed": seed})
        finished = run_dir_for(seed_cfg) / "summary.json"
        if len(seeds) > 1 and finished.is_file() and not args.force:
            # --seeds tops up: seeds that already finished with this config are reused
            print(
                f"seed {seed}: already finished in {finished.parent}, reusing it (--force trains it again)"
            )
            summaries.append(json.loads(finished.read_text()))
            continue
        result = run(
            seed_cfg,
            resume=args.resume,
            force=args.force,
            progress=not args.quiet,
            log=print,
            trust_code=args.trust_code,
        )
        s = result.summary
        if not s:  # a secondary process of a data-parallel run: the first one reports
            continue
        line = f"{result.run_dir}: test top-1 {s['test_top1']:.2%} (best {s['best_test_top1']:.2%}), {s['params']:,} params, {s['total_time_s']:.1f}s"
        if "teacher_test_top1" in s:
            line += f"; teacher {s['teacher_test_top1']:.2%}"
        print(line)
        summaries.append(s)
    if len(seeds) > 1 and summaries:
        from kdistill.engine.recorder import RunRecorder

        agg = aggregate_runs(summaries)
        RunRecorder(group_dir(cfg)).write_json("seeds.json", agg)
        print(format_aggregate(agg))
        print(f"aggregate written to {group_dir(cfg) / 'seeds.json'}")
    return 0
