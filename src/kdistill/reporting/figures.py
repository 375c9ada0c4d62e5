"""Report figures, drawn with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from kdistill.reporting.collect import Group

# The first group of each role gets the role's first color, further groups of that role its
# other shades, so that two distilled students (cached and online teacher) stay apart.
SHADES = {
    "teacher": ("#444444", "#888888", "#222222"),
    "scratch": ("#1f77b4", "#17becf", "#0b3d91", "#6baed6"),
    "distilled": ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22"),
}


def group_colors(groups: Sequence[Group]) -> list[str]:
    """A color per group: the role's color, then its other shades in order."""
    seen: dict[str, int] = {}
    colors = []
    for g in groups:
        shades = SHADES.get(g.role, ("#888888",))
        k = seen.get(g.role, 0)
        seen[g.role] = k + 1
        colors.append(shades[k % len(shades)])
    return colors


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(
    groups: Sequence[Group],
    metric: str,
    ylabel: str,
    title: str,
    path: Path,
    height: float,
    *,
    split: str = "test",
    scale: float = 100.0,
    log_scale: bool = False,
) -> Path:
    """``metrics[split][metric] * scale`` per epoch for each group: mean over seeds, min-max
    band."""
    fig, ax = plt.subplots(figsize=(7, height))
    for g, color in zip(groups, group_colors(groups), strict=True):
        xs, mean, lo, hi = g.curve(split, metric)
        if not xs:
            continue
        seeds = f"{len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}"
        ax.plot(
            xs,
            [scale * v for v in mean],
            label=f"{g.label} ({g.role}, {seeds})",
            color=color,
            marker="o" if len(xs) <= 10 else None,  # a 1-epoch run is a point, not nothing
        )
        if len(g.runs) > 1:
            ax.fill_between(
                xs, [scale * v for v in lo], [scale * v for v in hi], alpha=0.15, color=color
            )
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if log_scale:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 6, not 6 x 10^0
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def learning_curves(groups: Sequence[Group], path: Path) -> Path:
    """Test top-1 per epoch, mean over seeds with the min-max band."""
    return _curves(groups, "top1", "test top-1 (%)", "Learning curves", path, 4)


def perplexity_curves(groups: Sequence[Group], path: Path) -> Path:
    """Language models: validation perplexity per epoch (log scale), mean over seeds with the
    min-max band."""
    return _curves(
        groups, "perplexity", "validation perplexity", "Validation perplexity", path, 4,
        split="val", scale=1.0, log_scale=True,
    )  # fmt: skip


def agreement_curves(groups: Sequence[Group], path: Path) -> Path:
    """Student-teacher agreement on the test split per epoch (distilled groups)."""
    return _curves(
        groups,
        "agreement",
        "agreement with teacher (%)",
        "Student-teacher agreement (test)",
        path,
        3.5,
    )


def calibration(groups: Sequence[Group], path: Path) -> Path:
    """Expected calibration error of each group's final models (mean and std over seeds)."""
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(groups)), 4))
    labels, means, stds, colors = [], [], [], []
    for g, color in zip(groups, group_colors(groups), strict=True):
        stat = g.stat("test_ece")
        if stat is None:
            continue
        labels.append(f"{textwrap.fill(g.label, 16)}\n({g.role})")
        means.append(100 * stat["mean"])
        stds.append(100 * stat["std"])
        colors.append(color)
    ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=4)
    # many groups: labels turn so they do not run into each other
    rotation = 0 if len(labels) <= 4 else 30
    ax.set_xticks(
        range(len(labels)),
        labels,
        fontsize=8,
        rotation=rotation,
        ha="right" if rotation else "center",
    )
    ax.set_ylabel("ECE (%) - lower is better")
    ax.set_title("Calibration (expected calibration error, 15 bins)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def method_label(g: Group) -> str:
    """What taught a group: its distillation methods, ``scratch``, or ``teacher``."""
    if g.role in ("teacher", "scratch"):
        return g.role
    return "+".join(g.first.methods) or "kd"


def methods_tradeoff(groups: Sequence[Group], path: Path) -> Path:
    """Test top-1 (mean and std over seeds) against the median epoch time, a point per group
    labelled with its methods: what each distillation method buys and costs."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, color in zip(groups, group_colors(groups), strict=True):
        top1 = g.stat("test_top1")
        times = [sorted(r.summary.epoch_times_s)[len(r.summary.epoch_times_s) // 2]
                 for r in g.runs if r.summary.epoch_times_s]  # fmt: skip
        if top1 is None or not times:
            continue
        x = sum(times) / len(times)
        ax.errorbar(x, 100 * top1["mean"], yerr=100 * top1["std"], fmt="o", color=color, capsize=3)
        ax.annotate(
            f"{method_label(g)} ({g.label})", (x, 100 * top1["mean"]), fontsize=7,
            textcoords="offset points", xytext=(5, 4),
        )  # fmt: skip
    ax.set_xlabel("median epoch time (s)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Distillation methods: accuracy against epoch time")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def text_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of this color (WCAG relative
    luminance: black on light cells such as viridis' yellow, white on dark ones)."""

    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if luminance > 0.179 else "white"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def sweep_lines(
    summary: dict[str, Any], path: Path, baselines: Sequence[tuple[str, float]] = ()
) -> Path:
    """Mean test top-1 (error bars: std over seeds) against the first swept key, one line per
    value of the second key; ``baselines`` (label, top-1) are drawn as dotted lines."""
    keys = summary["keys"]
    rows = [r for r in summary["rows"] if r["test_top1_mean"] is not None]
    x_key = keys[0]
    series_key = keys[1] if len(keys) > 1 else None
    fig, ax = plt.subplots(figsize=(7, 4))
    series = sorted({r[series_key] for r in rows}, key=str) if series_key else [None]
    for s in series:
        pts = sorted(
            (r for r in rows if series_key is None or r[series_key] == s), key=lambda r: r[x_key]
        )
        xs = [r[x_key] for r in pts]
        ax.errorbar(
            xs if _numeric(xs) else [str(x) for x in xs],
            [100 * r["test_top1_mean"] for r in pts],
            yerr=[100 * r["test_top1_std"] for r in pts],
            marker="o",
            capsize=3,
            label=None if series_key is None else f"{series_key}={s}",
        )
    if summary.get("teacher_test_top1") is not None:
        ax.axhline(
            100 * summary["teacher_test_top1"],
            color=SHADES["teacher"][0],
            linestyle="--",
            linewidth=1,
            label="teacher",
        )
    for (label, top1), color in zip(baselines, SHADES["scratch"], strict=False):
        ax.axhline(
            100 * top1, color=color, linestyle=":", linewidth=1.5, label=f"{label} (scratch)"
        )
    xs_all = [r[x_key] for r in rows]
    if _numeric(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(xs_all)), [f"{v:g}" for v in sorted(set(xs_all))])
    ax.set_xlabel(x_key)
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title(f"Sweep {summary['name']}")
    ax.grid(alpha=0.3)
    if series_key or baselines or summary.get("teacher_test_top1") is not None:
        ax.legend(fontsize=8)
    return _save(fig, path)


def sweep_heatmap(summary: dict[str, Any], path: Path) -> Path | None:
    """Mean test top-1 over the grid of two swept keys (``None`` unless exactly two keys)."""
    keys = summary["keys"]
    if len(keys) != 2 or summary.get("kind") != "grid":
        return None
    rows = summary["rows"]
    xs = sorted({r[keys[0]] for r in rows}, key=lambda v: (str(type(v)), v))
    ys = sorted({r[keys[1]] for r in rows}, key=lambda v: (str(type(v)), v))
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in rows:
        if r["test_top1_mean"] is not None:
            grid[ys.index(r[keys[1]])][xs.index(r[keys[0]])] = 100 * r["test_top1_mean"]
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 1.8))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            value = grid[i][j]
            ax.text(
                j,
                i,
                "failed" if value != value else f"{value:.2f}",
                ha="center",
                va="center",
                color=text_color(im.cmap(im.norm(value))) if value == value else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys])
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    ax.set_title(f"Sweep {summary['name']}: mean test top-1 (%)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def layer_importance(rows: Sequence[dict[str, float]], perplexity: float, path: Path) -> Path:
    """A language model's layers: the calibration perplexity with each one skipped (log scale,
    the whole model's as a line) and the cosine distance between each one's input and output."""
    layers = [int(r["layer"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.bar(layers, [r["skipped_perplexity"] for r in rows], color="#d62728")
    top.axhline(perplexity, color="#444444", linestyle="--", label="no layer skipped")
    top.set_yscale("log")
    top.set_ylabel("perplexity, layer skipped")
    top.legend(loc="upper right", fontsize=8)
    bottom.bar(layers, [r["cosine_distance"] for r in rows], color="#1f77b4")
    bottom.set_ylabel("1 - cos(input, output)")
    bottom.set_xlabel("layer")
    top.set_title("Layer importance on the calibration tokens")
    return _save(fig, path)
