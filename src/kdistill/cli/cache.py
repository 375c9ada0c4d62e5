"""``kdistill cache``: precompute a teacher's outputs once for every run that can reuse them."""

from __future__ import annotations

import argparse
import json

from kdistill.cli.train import add_run_flags, build_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="build or inspect a teacher-output cache",
        description=(
            "build: run the config's teacher over every training sample and augmentation view "
            "and store its outputs (resumable; an interrupted build continues). Training with "
            "kd.teacher_cache.enabled=true then reads them instead of running the teacher. "
            "info: show what a cache directory holds."
        ),
    )
    p.add_argument("action", choices=("build", "info"))
    p.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG|KEY=VALUE|DIR",
        help="build: config and overrides; info: cache directory",
    )
    add_run_flags(p, training=False)
    p.add_argument(
        "--rebuild", action="store_true", help="compute the outputs again even if the cache exists"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.action == "info":
        from kdistill.cache import TeacherCache

        if len(args.items) != 1:
            raise ValueError("cache info takes one cache directory")
        cache = TeacherCache(args.items[0])
        info = {
            "path": str(cache.path),
            "fingerprint": cache.fingerprint,
            "size_bytes": cache.size_bytes(),
            **cache.manifest,
        }
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    from kdistill.experiment import build_run

    cfg = build_config(args)
    if cfg.kd is None:
        raise ValueError("the config has no kd section: there is no teacher to cache")
    if cfg.kd.teacher_weight > 0:
        raise ValueError(
            f"kd.teacher_weight={cfg.kd.teacher_weight} trains the teacher jointly: its outputs "
            "change every step and cannot be cached"
        )
    from kdistill.config import apply_values

    cfg = apply_values(cfg, {"kd.teacher_cache.enabled": True})
    parts = build_run(
        cfg,
        trust_code=args.trust_code,
        progress=not args.quiet,
        wait_for_cache_builder=False,
        rebuild_cache=args.rebuild,
        threads=args.threads,
    )
    cache = parts.cache
    if cache is None:
        return 1
    print(
        f"teacher cache ready: {cache.path} ({cache.size_bytes() / 2**20:.1f} MiB, fingerprint {cache.fingerprint[:16]})"
    )
    return 0
