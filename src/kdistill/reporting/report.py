"""``report.html`` (self-contained: figures embedded) and ``report.md`` (figures beside it)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.files import RECORD
from kdistill.record import RunRecord
from kdistill.reporting import figures
from kdistill.reporting.collect import Collection, Group, Sweep, collect


@dataclass
class Figure:
    title: str
    path: Path
    caption: str


def _pct(stat: dict[str, Any] | None, *, spread: bool = True) -> str:
    if stat is None:
        return "-"
    text = f"{100 * stat['mean']:.2f}"
    if stat["n"] > 1 and spread:
        text += f" ± {100 * stat['std']:.2f} ({100 * stat['worst']:.2f}-{100 * stat['best']:.2f})"
    return text


def model_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """The comparison of models: one row per group (all its seeds)."""
    header = [
        "model", "role", "arch", "seeds", "test top-1 % (mean ± std, worst-best)", "ECE %",
        "agreement %", "params", "size KB", "MACs", "CPU ms b1", "CPU ms b128", "compression",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s = g.first
        latency = s.get("cpu_latency_ms") or {}
        rows.append(
            [
                g.label,
                g.role,
                str(s.get("arch", "")),
                str(len(g.runs)),
                _pct(g.stat("test_top1")),
                _pct(g.stat("test_ece"), spread=False),
                _pct(g.stat("test_agreement"), spread=False),
                f"{s.get('params', 0):,}",
                f"{s.get('size_bytes', 0) / 1024:.1f}",
                f"{s.get('macs', 0):,}",
                f"{latency['batch_1']:.2f}" if "batch_1" in latency else "-",
                f"{latency['batch_128']:.1f}" if "batch_128" in latency else "-",
                str(s.get("compression", {}).get("description", "none"))
                if isinstance(s.get("compression"), dict)
                else "none",
            ]
        )
    return header, rows


def sweep_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = summary["keys"]
    header = [*keys, "seeds", "mean %", "std %", "best %", "worst %", "time s", "status"]
    rows = []
    for r in sorted(summary["rows"], key=lambda r: -(r["test_top1_mean"] or -1)):

        def p(v: float | None) -> str:
            return "failed" if v is None else f"{100 * v:.2f}"

        rows.append(
            [
                *(f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys),
                str(r["n_seeds"]) + (f" (+{r['n_failed']} failed)" if r.get("n_failed") else ""),
                p(r["test_top1_mean"]),
                p(r["test_top1_std"]),
                p(r["test_top1_best"]),
                p(r["test_top1_worst"]),
                "-" if r["time_s_mean"] is None else f"{r['time_s_mean']:.0f}",
                _status(r),
            ]
        )
    return header, rows


def _status(row: dict[str, Any]) -> str:
    """A sweep row's health: collapsed and failed seeds are marked, never read as results."""
    seeds = row["n_seeds"] + row.get("n_failed", 0)
    if row.get("n_collapsed"):
        return f"COLLAPSED ({row['n_collapsed']} of {seeds} seeds)"
    if row.get("n_failed"):
        return f"FAILED ({row['n_failed']} of {seeds} seeds)"
    return "ok"


def build_figures(collection: Collection, fig_dir: Path) -> list[Figure]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: list[Figure] = []
    groups = collection.groups
    if groups:
        out.append(
            Figure(
                "Learning curves",
                figures.learning_curves(groups, fig_dir / "learning_curves.png"),
                "Test top-1 per epoch; lines are means over seeds, bands the range.",
            )
        )
        if any(g.stat("test_ece") for g in groups):
            out.append(
                Figure(
                    "Calibration",
                    figures.calibration(groups, fig_dir / "calibration.png"),
                    "Expected calibration error of the final models (bars: mean, whiskers: std over seeds).",
                )
            )
        distilled = [g for g in groups if g.role == "distilled"]
        if len({figures.method_label(g) for g in distilled}) > 1:
            out.append(
                Figure(
                    "Distillation methods",
                    figures.methods_tradeoff(
                        [g for g in groups if g.role != "teacher"], fig_dir / "methods.png"
                    ),
                    "Test top-1 (mean, whiskers: std over seeds) against the median epoch "
                    "time of each group; labels name the methods (epoch times are comparable "
                    "only between runs made on the same machine under the same load).",
                )
            )
        if distilled:
            out.append(
                Figure(
                    "Student-teacher agreement",
                    figures.agreement_curves(distilled, fig_dir / "agreement.png"),
                    "How often the distilled student predicts the teacher's class on the test split.",
                )
            )
    for sweep in collection.sweeps:
        name = sweep.summary["name"]
        baselines = _scratch_baselines(sweep, groups)
        out.append(
            Figure(
                f"Sweep {name}",
                figures.sweep_lines(sweep.summary, fig_dir / f"sweep_{name}.png", baselines),
                f"Test top-1 against {sweep.summary['keys'][0]}; error bars: std over seeds"
                + ("; dotted: the same student from scratch (mean)." if baselines else "."),
            )
        )
        heat = figures.sweep_heatmap(sweep.summary, fig_dir / f"sweep_{name}_heatmap.png")
        if heat is not None:
            out.append(Figure(f"Sweep {name} (grid)", heat, "Mean test top-1 over the grid."))
    return out


def _scratch_baselines(sweep: Sweep, groups: Sequence[Group]) -> list[tuple[str, float]]:
    """Scratch runs of the report with the sweep's student (same dataset, architecture and
    parameter count): the line a distilled student has to beat."""
    first = next(iter(sorted((sweep.path / "runs").glob(f"*/seed-*/{RECORD}"))), None)
    if first is None:
        return []
    student = RunRecord.read(first, verify_files=False)
    keys = ("dataset", "arch", "params")
    out = []
    for g in groups:
        stat = g.stat("test_top1")
        if g.role == "scratch" and stat and all(g.first.get(k) == student.get(k) for k in keys):
            out.append((g.label, stat["mean"]))
    return out


# ----------------------------------------------------------------------------- writers


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 1px 4px; }
"""


def write_report(
    paths: Sequence[str | Path], out_dir: str | Path, *, title: str = "kdistill report"
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (with ``figures/``) for the runs under ``paths``."""
    collection = collect(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = build_figures(collection, out / "figures")
    sources = ", ".join(str(p) for p in paths)

    md = [f"# {title}", "", f"Runs and sweeps from: `{sources}`.", ""]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Runs and sweeps from: <code>{html.escape(sources)}</code>.</p>",
    ]
    if collection.groups:
        header, rows = model_table(collection.groups)
        md += ["## Models", "", _md_table(header, rows), ""]
        md += [
            "Test top-1 is the final epoch's; with several seeds it is mean ± std (worst-best), as in published KD tables.",
            "",
        ]
        body += ["<h2>Models</h2>", _html_table(header, rows)]
        body.append(
            "<p>Test top-1 is the final epoch's; with several seeds it is mean ± std (worst-best).</p>"
        )
    for sweep in collection.sweeps:
        header, rows = sweep_table(sweep.summary)
        md += [f"## Sweep {sweep.summary['name']}", "", _md_table(header, rows), ""]
        body += [f"<h2>Sweep {html.escape(sweep.summary['name'])}</h2>", _html_table(header, rows)]
    if figs:
        md += ["## Figures", ""]
        body.append("<h2>Figures</h2>")
    for f in figs:
        rel = os.path.relpath(f.path, out)
        md += [f"### {f.title}", "", f"![{f.title}]({rel})", "", f.caption, ""]
        data = base64.b64encode(f.path.read_bytes()).decode()
        body.append(
            f'<figure><img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(f.title)}: {html.escape(f.caption)}</figcaption></figure>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(page, encoding="utf-8")
    md_path.write_text("\n".join(md), encoding="utf-8")
    return html_path, md_path
