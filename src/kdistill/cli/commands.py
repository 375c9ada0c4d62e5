"""What the verbs of ``kdistill`` share: errors, config lookup, argument parsing helpers."""

from __future__ import annotations

import argparse

from kdistill.config.errors import ConfigError


class UserError(ValueError):
    """A mistake in how the command was called (exit status 2)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Failures that are explained by their message and need no traceback (exit status 1):
    bad values, files and run directories (ValueError and its kind), training that cannot go
    on, a lost peer of a distributed run, OS errors (named with their path), and an optional
    feature whose extra is not installed (named with the pip command)."""
    from kdistill.engine.distributed import PeerFailureError
    from kdistill.engine.trainer import TrainingError
    from kdistill.extras import MissingExtraError

    return (ValueError, TrainingError, PeerFailureError, OSError, MissingExtraError)


def add_trust_code_flag(p: argparse.ArgumentParser) -> None:
    """``--trust-code`` for verbs that read model files: they may then build import-path
    architectures the file names (which imports and runs their code)."""
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="build an import-path architecture named by a model file (imports and runs its code)",
    )


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number >= 1, got {text!r}")
    return value


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """``--threads N``: PyTorch's CPU threads for this command (not part of any config)."""
    p.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help="CPU threads for PyTorch (default: one per physical core, shared by the runs of "
        "this command and fewer when other processes keep cores busy; a run logs its choice)",
    )


def use_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (or the machine's choice) for a verb that computes outside a run
    (a run applies it itself, see :func:`kdistill.experiment.configure_torch`)."""
    import torch

    from kdistill.hardware import choose_threads

    torch.set_num_threads(choose_threads(getattr(args, "threads", None)).threads)


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...``: the first item without ``=`` is the config."""
    config = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise UserError(
                f"unexpected argument {item!r}: give one config file, then key=value overrides"
            )
    return config, overrides


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> ``[0, 1, 2]`` / ``[0, 1, 2, 3, 4]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"--seeds must look like 0,1,2 or 0-4, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds must list distinct seeds, got {text!r}")
    return seeds


__all__ = [
    "ConfigError",
    "UserError",
    "add_threads_flag",
    "parse_seeds",
    "split_config_and_overrides",
    "use_threads",
    "user_errors",
]
