"""``kdistill train``: one config (YAML, flags, overrides), one or more seeds."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from kdistill.cli.commands import (
    UserError,
    add_threads_flag,
    parse_seeds,
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


def add_run_flags(p: argparse.ArgumentParser, *, training: bool = True) -> None:
    """Flags shared by ``train`` and other verbs that build a run config; ``training=False``
    leaves out the ones that only shape training (epochs, learning rate, batch, seed, name)."""
    g = p.add_argument_group("common settings (each sets the config key in brackets)")
    g.add_argument("--arch", "-a", help="student architecture [model.arch]")
    g.add_argument("--dataset", help="dataset name [data.name]")
    g.add_argument("--data-root", help="dataset location [data.root]")
    if training:
        g.add_argument("--epochs", type=int, help="[train.epochs]")
        g.add_argument("--lr", type=float, help="peak learning rate [optim.lr]")
        g.add_argument("-b", "--batch-size", type=int, help="[data.batch_size]")
        g.add_argument("--seed", type=int, help="[train.seed]")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N [train.device]")
    if training:
        g.add_argument("--name", help="run name [name]")
    g.add_argument("--out", help="directory of run directories [out_dir]")
    add_threads_flag(g)
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


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the given flags set."""
    return {
        key: getattr(args, dest)
        for dest, key in FLAG_KEYS.items()
        if getattr(args, dest, None) is not None
    }


def build_config(args: argparse.Namespace, *, say_notes: bool = True) -> Any:
    """The run config from ``CONFIG``, flags and overrides (in that order of precedence);
    the loader's notes printed unless ``say_notes`` is false."""
    from kdistill.config import ConfigError, load_config

    config, overrides = split_config_and_overrides(args.items)
    values = flag_values(args)
    notes: list[str] = []
    try:
        cfg = load_config(config, overrides, values=values, notes=notes)
        for note in notes if say_notes else ():
            print(f"note: {note}")
        return cfg
    except ConfigError as e:
        # name the flag too when a flag set the bad value
        flags = [
            f"--{dest.replace('_', '-')}"
            for dest, key in FLAG_KEYS.items()
            if key in values and str(e).startswith(key)
        ]
        if flags:
            raise ConfigError(f"{e} (set by {flags[0]})") from None
        raise


def owns_its_name(args: argparse.Namespace) -> bool:
    """Whether this run may move the ``<out_dir>/<name>`` link that other recipes use to name
    their teacher: a config run as written (``--out`` and ``--seed`` aside), or a run the user
    named themselves. A recipe run with other settings does not take over the recipe's name."""
    _config, overrides = split_config_and_overrides(args.items)
    if args.name is not None or any(o.split("=", 1)[0].strip() == "name" for o in overrides):
        return True
    changed = {k for k in flag_values(args) if k not in ("out_dir", "train.seed")}
    return not overrides and not changed


def drop_launcher_traceback(lines: Iterable[str]) -> Iterator[str]:
    """torchrun's stderr without its own traceback when a process fails (the failed process's
    error and torchrun's summary of which rank failed how stay; the traceback of torchrun's
    own ``ChildFailedError`` says nothing more)."""
    held: list[str] = []
    for line in lines:
        if held:
            held.append(line)
            if not line[:1].isspace():  # the exception line ends a traceback
                if "ChildFailedError" not in line:
                    yield from held
                held = []
        elif line.startswith("Traceback (most recent call last):"):
            held = [line]
        else:
            yield line
    yield from held


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
    from kdistill.processes import die_with_parent

    # torchrun dies with this launcher (even a SIGKILL), and its processes with it: a rerun
    # never races ranks of a run that was stopped.
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, bufsize=1, preexec_fn=die_with_parent
    )
    try:
        assert proc.stderr is not None
        for line in drop_launcher_traceback(proc.stderr):
            sys.stderr.write(line)
            sys.stderr.flush()
        returncode = proc.wait()
    except BaseException:
        proc.terminate()  # torchrun stops its processes on SIGTERM
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
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
        # a bad setting is said once, here, before any process starts (not by every process,
        # inside torchrun's failure report)
        build_config(args, say_notes=False)
        return launch_torchrun(args)
    from kdistill.config import apply_values
    from kdistill.experiment import group_dir, run, train_or_reuse
    from kdistill.experiment.finish import describe_record
    from kdistill.files import SEEDS, atomic_write_text
    from kdistill.reporting.aggregate import aggregate_runs, format_aggregate

    if args.seeds and args.seed is not None:
        raise UserError("give --seed or --seeds, not both")
    cfg = build_config(args)
    seeds = parse_seeds(args.seeds) if args.seeds else [cfg.train.seed]
    owns_name = owns_its_name(args)
    if not owns_name and int(os.environ.get("RANK", "0")) == 0:  # said once, not per process
        print(
            f"this run changes the recipe's settings, so {cfg.out_dir}/{cfg.name} keeps naming "
            "the recipe's own run; give it a name (--name) to link it"
        )
    records = []
    for seed in seeds:
        seed_cfg = apply_values(cfg, {"train.seed": seed})
        # The <out_dir>/<name> link names the recipe as written, at its own seed.
        link = owns_name and seed == cfg.train.seed
        common = {
            "progress": not args.quiet,
            "log": print,
            "trust_code": args.trust_code,
            "threads": args.threads,
        }
        if len(seeds) > 1:
            # --seeds tops up: seeds that already finished with this config are reused
            result, reused = train_or_reuse(
                seed_cfg, resume=args.resume, force=args.force, link=link, **common
            )
            if reused:
                print(
                    f"seed {seed}: already finished in {result.run_dir}, reusing it (--force trains it again)"
                )
        else:
            result = run(seed_cfg, resume=args.resume, force=args.force, link=link, **common)
        if result.record is None:  # a secondary process of a data-parallel run: the first reports
            continue
        print(describe_record(result.record))
        records.append(result.record)
    if len(seeds) > 1 and records:
        agg = aggregate_runs(records)
        path = group_dir(cfg) / SEEDS
        atomic_write_text(path, json.dumps(agg, indent=2, sort_keys=True) + "\n")
        print(format_aggregate(agg))
        print(f"aggregate written to {path}")
    return 0
