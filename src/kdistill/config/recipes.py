"""The recipes shipped inside the package, found by name (``digits/distill``)."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from kdistill.config.errors import ConfigError


class UnknownRecipeError(ConfigError):
    """A config that is neither a file nor a shipped recipe."""


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


def resolve_config_path(source: str | Path) -> Path:
    """A YAML path as given, or the file of a shipped recipe (``digits/distill``).

    Raises:
        UnknownRecipeError: neither; suggests the closest recipe names.
    """
    path = Path(source)
    if path.is_file():
        return path
    text = str(source)
    shipped = recipes_root() / (text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
    if shipped.is_file():
        return shipped
    names = list_recipes()
    close = difflib.get_close_matches(text.removesuffix(".yaml"), names, n=3, cutoff=0.6)
    hint = (
        f"did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else "see `kdistill config list` for the shipped recipes"
    )
    if text.endswith((".yaml", ".yml")):
        raise UnknownRecipeError(f"config file {text!r} does not exist; {hint}")
    raise UnknownRecipeError(f"config {text!r} is neither a file nor a shipped recipe; {hint}")
