"""The sweep file: which run config, which settings to try, how many seeds each.

A sweep is a grid (every combination of listed values) or a search (Optuna, seeded) over any
run-config keys. Like run configs, sweep files hold values only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kdistill.config.loader import ConfigError, from_dict, read_yaml
from kdistill.validation import check_fields, doc

SamplerName = Literal["tpe", "random"]
# Keys a sweep sets itself for every run.
RESERVED_KEYS = {
    "train.seed": "list the seeds under seeds: (each setting runs with every seed)",
    "out_dir": "the runs of a sweep live in its own directory (set the sweep's out_dir)",
}
Metric = Literal["auto", "test_top1", "val_top1", "best_test_top1"]


@dataclass(frozen=True)
class SearchConfig:
    """An Optuna search: ``trials`` settings drawn from ``space``."""

    trials: int = doc("number of settings to try (each with every seed)", 20)
    sampler: SamplerName = doc("tpe (Bayesian) or random", "tpe")
    seed: int = doc("seed of the sampler (the same seed proposes the same settings)", 0)
    space: dict[str, Any] = doc(
        "key -> [choices] or {low: .., high: .., log: true|false, int: true|false}", factory=dict
    )

    def __post_init__(self) -> None:
        check_fields(self, "search")
        if self.trials < 1:
            raise ConfigError(f"search.trials must be >= 1, got {self.trials}")
        if not self.space:
            raise ConfigError("search.space is empty: give at least one key to search over")
        for key, spec in self.space.items():
            parse_param(key, spec)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep over settings of one run config."""

    base: str = doc(
        "the run config: a YAML path (relative to the sweep file) or a shipped recipe", ""
    )
    name: str = doc("sweep name; results go to <out_dir>/<name>", "sweep")
    out_dir: str = doc("where sweep directories are created", "runs/sweeps")
    overrides: tuple[str, ...] = doc("key=value overrides applied to the base config first", ())
    seeds: tuple[int, ...] = doc("seeds of every setting", (0,))
    parallel: int | None = doc(
        "trials run at a time; null = one per two CPU cores (at least one)", None
    )
    grid: dict[str, list[Any]] = doc(
        "key -> list of values; every combination is run", factory=dict
    )
    search: SearchConfig | None = doc("an Optuna search instead of a grid", None)
    metric: Metric = doc(
        "what a search maximizes (mean over seeds): auto = val_top1 when the config has a "
        "validation split, else test_top1",
        "auto",
    )
    share_teacher: bool = doc(
        "enable the teacher-output cache in every trial, so the teacher runs once for all "
        "settings that share its outputs",
        True,
    )

    def __post_init__(self) -> None:
        check_fields(self, "")
        if not self.base:
            raise ConfigError(
                "a sweep needs base: the run config to sweep (a YAML path or a recipe)"
            )
        if bool(self.grid) == (self.search is not None):
            raise ConfigError("a sweep needs exactly one of grid: or search:")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
        swept = [*self.grid, *(self.search.space if self.search is not None else {})]
        for key in swept:
            if key in RESERVED_KEYS:
                raise ConfigError(f"the sweep cannot vary {key}: {RESERVED_KEYS[key]}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must list distinct seeds, got {list(self.seeds)}")
        if self.parallel is not None and self.parallel < 1:
            raise ConfigError(f"parallel must be >= 1 or null, got {self.parallel}")
        if not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"name must use letters, digits, '-', '_' or '.', got {self.name!r}")

    def grid_settings(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in a stable order."""
        keys = list(self.grid)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.grid[k] for k in keys))
        ]


@dataclass(frozen=True)
class ParamSpec:
    """One searched key: choices, or a numeric range."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False


def parse_param(key: str, spec: Any) -> ParamSpec:
    """``[a, b, c]`` -> choices; ``{low, high, log, int}`` -> a range."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search.space.{key}: the list of choices is empty")
        return ParamSpec(key, choices=tuple(spec))
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"search.space.{key} must be a list of choices or {{low, high}}, got {spec!r}"
        )
    unknown = set(spec) - {"low", "high", "log", "int"}
    if unknown:
        raise ConfigError(
            f"search.space.{key}: unknown field(s) {sorted(unknown)}; valid: low, high, log, int"
        )
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"search.space.{key} needs numeric low and high, got {dict(spec)}"
        ) from None
    log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"search.space.{key}: need low < high, got {low} and {high}")
    if log and low <= 0:
        raise ConfigError(f"search.space.{key}: a log range needs low > 0, got {low}")
    return ParamSpec(key, low=low, high=high, log=log, integer=integer)


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    """The sweep config of a YAML file and the directory relative paths resolve against."""
    p = Path(path)
    return from_dict(SweepConfig, read_yaml(p)), p.resolve().parent
