"""``kdistill sweep``: a grid or an Optuna search over run-config keys, several seeds each."""

from __future__ import annotations

import argparse

from kdistill.cli.commands import add_threads_flag


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid or search over config keys (temperature, weights, ...) with seeds",
        description=(
            "kdistill sweep SWEEP.yaml, or kdistill sweep --base CONFIG --grid "
            "kd.temperature=1,2,4,8,20 --grid kd.beta=0.5,0.9 --seeds 0,1,2; key=value items "
            "override the base config, as with train. Interrupted sweeps resume where they "
            "stopped; finished runs are never trained again."
        ),
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="SWEEP.yaml|KEY=VALUE",
        help="a sweep YAML file (see docs/sweeps.md), then overrides of its base config",
    )
    p.add_argument("--base", help="run config (path or recipe) to sweep, instead of a sweep file")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a grid axis (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of the base config (repeatable; the same as a KEY=VALUE item)",
    )
    p.add_argument("--seeds", help="seeds of every setting, e.g. 0,1,2")
    p.add_argument("--name", help="sweep name")
    p.add_argument("--out", help="directory of sweep directories")
    p.add_argument("--parallel", type=int, help="trials at a time")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let model files name import-path architectures the config does not write itself",
    )
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def build_sweep(args: argparse.Namespace):
    from pathlib import Path

    import yaml

    from kdistill.cli.commands import UserError, parse_seeds, split_config_and_overrides
    from kdistill.config import from_dict
    from kdistill.config.sweep import SweepConfig, load_sweep

    sweep_file, overrides = split_config_and_overrides(args.items)
    overrides = [*args.set, *overrides]
    if sweep_file:
        if args.base or args.grid:
            raise UserError("give a sweep file, or --base with --grid, not both")
        sweep, base_dir = load_sweep(sweep_file)
    else:
        if not args.base or not args.grid:
            raise UserError(
                "without a sweep file, give --base CONFIG and at least one --grid KEY=V1,V2"
            )
        grid = {}
        for item in args.grid:
            key, sep, values = item.partition("=")
            if not sep or not values:
                raise UserError(f"--grid {item!r} must look like key=v1,v2,...")
            grid[key] = [yaml.safe_load(v) for v in values.split(",")]
        sweep, base_dir = from_dict(SweepConfig, {"base": args.base, "grid": grid}), Path.cwd()
    changes = {}
    if args.seeds:
        changes["seeds"] = tuple(parse_seeds(args.seeds))
    for flag in ("name", "parallel"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    if args.out:
        changes["out_dir"] = args.out
    if overrides:
        changes["overrides"] = (*sweep.overrides, *overrides)
    if changes:
        from dataclasses import replace

        sweep = replace(sweep, **changes)
    return sweep, base_dir


def handle(args: argparse.Namespace) -> int:
    from kdistill.experiment.sweep import run_sweep

    sweep, base_dir = build_sweep(args)
    run_sweep(sweep, base_dir, trust_code=args.trust_code, threads=args.threads)
    return 0
