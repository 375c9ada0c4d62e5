"""``kdistill``: the command line. The only reader of argv, environment and YAML files."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kdistill._version import __version__

EXIT_USAGE = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    # Verb modules import torch only inside their handlers, so --help and --version stay fast.
    from kdistill.cli import (
        cache,
        demo,
        distiller,
        evaluate,
        export,
        info,
        merge,
        methods,
        prune,
        report,
        sweep,
        train,
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="kdistill",
        allow_abbrev=False,
        description="Knowledge distillation for PyTorch: train teachers, students and distilled students.",
    )
    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in (
        demo.register,
        train.register,
        distiller.register,
        evaluate.register,
        export.register,
        info.register_models,
        info.register_config,
        methods.register_methods,
        methods.register_layers,
        cache.register,
        prune.register,
        merge.register,
        sweep.register,
        report.register,
    ):
        register(sub)
    for verb in sub.choices.values():  # no silent abbreviations: --epoch is not --epochs
        verb.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdistill`` console script; returns the exit status."""
    parser = build_parser()
    # key=value overrides may come after flags; argparse leaves those to us.
    raw = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(raw)
    args.raw_argv = raw
    if extra:
        if not hasattr(args, "items") or any(item.startswith("-") for item in extra):
            hint = getattr(args, "unknown_hint", "")
            parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        args.items = [*args.items, *extra]
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from kdistill.cli.commands import UserError, user_errors
    from kdistill.config.recipes import UnknownRecipeError

    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:  # the reader went away (`kdistill methods | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, UnknownRecipeError) as e:
        print(f"kdistill {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except user_errors() as e:
        print(f"kdistill {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"kdistill {args.command}: interrupted; checkpoints on disk are complete",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
