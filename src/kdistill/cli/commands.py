"""What the verbs of ``kdistill`` share: errors, config lookup, argument parsing helpers."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kdistill.config.loader import ConfigError


class UserError(ValueError):
    """A mistake in how the command was called (exit status 2)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Failures that are explained by their message and need no traceback (exit status 1)."""
    from kdistill.engine.distributed import PeerFailureError
    from kdistill.engine.trainer import TrainingError

    return (ValueError, TrainingError, PeerFailureError, FileNotFoundError, NotADirectoryError)


def recipes_root() -> Path:
    """The directory of the configs shipped inside the package."""
    return Path(str(resources.files("kdistill") / "configs"))


def list_recipes() -> list[str]:
    root = recipes_root()
    return sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.yaml")
        if p.parent.name != "sweeps"
    )


def resolve_config_path(text: str) -> Path:
    """A YAML path as given, or the name of a shipped recipe (``digits/distill``)."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = recipes_root() / (text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
    if shipped.is_file():
        return shipped
    raise UserError(
        f"config {text!r} is neither a file nor a shipped recipe; shipped recipes: "
        f"{', '.join(list_recipes())}"
    )


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
    "list_recipes",
    "parse_seeds",
    "recipes_root",
    "resolve_config_path",
    "split_config_and_overrides",
    "user_errors",
]
