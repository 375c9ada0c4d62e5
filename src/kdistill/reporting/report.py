"""``report.html`` (self-contained: figures embedded) and ``report.md`` (figures beside it)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
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
                _latency(latency, 1),
                _latency(latency, 128),
                str(s.get("compression", {}).get("description", "none"))
                if isinstance(s.get("compression"), dict)
                else "none",
            ]
        )
    return header, rows


def is_language_model(group: Group) -> bool:
    """Whether the group's runs trained a language model (their records hold perplexity)."""
    return group.first.get("test_perplexity") is not None


def _number(stat: dict[str, Any] | None, digits: int) -> str:
    if stat is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1:
        low, high = sorted((stat["worst"], stat["best"]))
        text += f" ± {stat['std']:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"
    return text


def language_model_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """The comparison of language models: one row per group (all its seeds)."""
    header = [
        "model", "role", "arch", "seeds", "test perplexity (mean ± std, range)", "bits per byte",
        "test tokens", "teacher's perplexity (bits per byte)", "top-1 agreement %", "params",
        "tokens/s",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s = g.first
        speed = g.stat("tokens_per_s")
        # a distilled group's teacher on the same test tokens (a pretrained teacher has no
        # run, hence no row of its own)
        teacher_ppl, teacher_bpb = (
            g.stat("teacher_test_perplexity"),
            g.stat("teacher_test_bits_per_byte"),
        )
        teacher = (
            f"{teacher_ppl['mean']:.2f}" + (f" ({teacher_bpb['mean']:.3f})" if teacher_bpb else "")
            if teacher_ppl
            else "-"
        )
        rows.append(
            [
                g.label,
                g.role,
                str(s.get("arch", "")),
                str(len(g.runs)),
                _number(g.stat("test_perplexity"), 2),
                _number(g.stat("test_bits_per_byte"), 3),
                f"{s.get('test_tokens') or 0:,}",
                teacher,
                _pct(g.stat("test_agreement"), spread=False),
                f"{s.get('params', 0):,}",
                f"{speed['mean']:,.0f}" if speed else "-",
            ]
        )
    return header, rows


def pruning_tables(groups: Sequence[Group]) -> list[tuple[str, list[str], list[list[str]]]]:
    """For each language-model group whose student an ``lm_pruning`` policy pruned (its first
    seed's record): the steps, and the per-layer importance measured before the first."""
    out = []
    for g in groups:
        pruning = (g.first.get("compression") or {}).get("lm_pruning")
        if not pruning or not pruning.get("history"):
            continue
        steps = [
            [
                str(h["epoch"]),
                f"{h['params']:,}",
                f"{h['non_embedding_params']:,}",
                f"{h['shape']['layers']} / {h['shape']['hidden']} / {h['shape']['heads']} / "
                f"{h['shape']['intermediate']}",
                f"{h['calibration_perplexity_before']:.2f} -> {h['calibration_perplexity_after']:.2f}",
            ]
            for h in pruning["history"]
        ]
        before = pruning["shape_before"]
        steps.insert(0, ["before", f"{pruning['params_before']:,}",
                         f"{pruning['non_embedding_params_before']:,}",
                         f"{before['layers']} / {before['hidden']} / {before['heads']} / "
                         f"{before['intermediate']}", "-"])  # fmt: skip
        header = ["epoch", "params", "non-embedding", "layers / hidden / heads / MLP",
                  "calibration perplexity (cut)"]  # fmt: skip
        out.append((f"Pruning: {g.label}", header, steps))
        layers = pruning["history"][0].get("layers") or []
        if layers:
            out.append(
                (
                    f"Layer importance before pruning: {g.label}",
                    ["layer", "perplexity if skipped", "1 - cos(in, out)"],
                    [
                        [
                            str(r["layer"]),
                            f"{r['skipped_perplexity']:.2f}",
                            f"{r['cosine_distance']:.4f}",
                        ]
                        for r in layers
                    ],
                )
            )
    return out


def continuations(groups: Sequence[Group]) -> dict[str, list[tuple[str, str]]]:
    """Per prompt, the greedy continuations the language-model runs recorded: a pretrained
    teacher's first (from the first distilled record holding one, where no teacher run is among
    the groups), then each group's model (its first seed's)."""
    recorded = [(g, g.first.get("continuations")) for g in groups]
    recorded = [(g, said) for g, said in recorded if isinstance(said, dict)]
    speakers: list[tuple[str, dict[str, str]]] = []
    # a teacher trained among these runs has its own group (and its own continuations)
    if not any(g.role == "teacher" for g in groups):
        teacher = next((said["teacher"] for _, said in recorded if "teacher" in said), None)
        if isinstance(teacher, dict):
            speakers.append(("teacher", teacher))
    speakers += [(f"{g.label} ({g.role})", said.get("student") or {}) for g, said in recorded]
    out: dict[str, list[tuple[str, str]]] = {}
    for who, said in speakers:
        for prompt, text in said.items():
            out.setdefault(str(prompt), []).append((who, str(text)))
    return out


def _latency(latency: dict[str, float], batch: int) -> str:
    """``median (IQR)`` in ms; records from before the spread was measured show the median
    alone, marked with a question mark (a handful of passes: noise)."""
    median = latency.get(f"batch_{batch}")
    if median is None:
        return "-"
    iqr = latency.get(f"batch_{batch}_iqr")
    digits = 2 if batch == 1 else 1
    return f"{median:.{digits}f} ({iqr:.{digits}f})" if iqr is not None else f"{median:.{digits}f}?"


def sweep_table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A sweep's results, best setting first (the console's table and the report's): the
    swept values, seeds, test top-1 mean, std, best and worst in %, time, and a status that
    marks collapsed and failed seeds, which are never read as results."""
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


def _status(row: Mapping[str, Any]) -> str:
    """A sweep row's health: collapsed and failed seeds are marked, never read as results."""
    seeds = row["n_seeds"] + row.get("n_failed", 0)
    if row.get("n_collapsed"):
        return f"COLLAPSED ({row['n_collapsed']} of {seeds} seeds)"
    if row.get("n_failed"):
        return f"FAILED ({row['n_failed']} of {seeds} seeds)"
    return "ok"


def by_dataset(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """The groups of each dataset, in order of first appearance: runs on different datasets
    are never drawn on one axis."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(str(g.first.get("dataset", "?")), []).append(g)
    return out


def model_figures(groups: Sequence[Group], fig_dir: Path, dataset: str | None) -> list[Figure]:
    """The figures of one dataset's groups (``dataset`` names them when there are several)."""
    tag = f"_{dataset}" if dataset else ""
    on = f" ({dataset})" if dataset else ""
    if any(is_language_model(g) for g in groups):
        return language_model_figures(groups, fig_dir, tag, on)
    out = [
        Figure(
            f"Learning curves{on}",
            figures.learning_curves(groups, fig_dir / f"learning_curves{tag}.png"),
            "Test top-1 per epoch; lines are means over seeds, bands the range.",
        )
    ]
    if any(g.stat("test_ece") for g in groups):
        out.append(
            Figure(
                f"Calibration{on}",
                figures.calibration(groups, fig_dir / f"calibration{tag}.png"),
                "Expected calibration error of the final models (bars: mean, whiskers: std over seeds).",
            )
        )
    distilled = [g for g in groups if g.role == "distilled"]
    if len({figures.method_label(g) for g in distilled}) > 1:
        out.append(
            Figure(
                f"Distillation methods{on}",
                figures.methods_tradeoff(
                    [g for g in groups if g.role != "teacher"], fig_dir / f"methods{tag}.png"
                ),
                "Test top-1 (mean, whiskers: std over seeds) against the median epoch "
                "time of each group; labels name the methods (epoch times are comparable "
                "only between runs made on the same machine under the same load).",
            )
        )
    if distilled:
        out.append(
            Figure(
                f"Student-teacher agreement{on}",
                figures.agreement_curves(distilled, fig_dir / f"agreement{tag}.png"),
                "How often the distilled student predicts the teacher's class on the test split.",
            )
        )
    return out


def language_model_figures(
    groups: Sequence[Group], fig_dir: Path, tag: str, on: str
) -> list[Figure]:
    out = [
        Figure(
            f"Validation perplexity{on}",
            figures.perplexity_curves(groups, fig_dir / f"perplexity{tag}.png"),
            "Perplexity of the validation split per epoch (log scale) for teacher, scratch and "
            "distilled students; lines are means over seeds, bands the range.",
        )
    ]
    for i, g in enumerate(groups):
        history = ((g.first.get("compression") or {}).get("lm_pruning") or {}).get("history")
        if history and history[0].get("layers"):
            first = history[0]
            out.append(
                Figure(
                    f"Layer importance before pruning: {g.label}",
                    figures.layer_importance(
                        first["layers"],
                        first["calibration_perplexity_before"],
                        fig_dir / f"layer_importance{tag}_{i}.png",
                    ),
                    f"Measured on {first['calibration_tokens']:,} calibration tokens of the "
                    "training split before the first pruning step: the perplexity with each "
                    "layer skipped, and the cosine distance between its input and output.",
                )
            )
    distilled = [g for g in groups if g.role == "distilled"]
    if distilled:
        out.append(
            Figure(
                f"Student-teacher agreement{on}",
                figures.agreement_curves(distilled, fig_dir / f"agreement{tag}.png"),
                "How often the distilled student's most likely next token is the teacher's, "
                "over the test split's tokens.",
            )
        )
    return out


def build_figures(collection: Collection, fig_dir: Path) -> list[Figure]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: list[Figure] = []
    datasets = by_dataset(collection.groups)
    for dataset, groups in datasets.items():
        out += model_figures(groups, fig_dir, dataset if len(datasets) > 1 else None)
    groups = collection.groups
    for sweep in collection.sweeps:
        name = sweep.summary["name"]
        baselines = _scratch_baselines(sweep, groups)
        out.append(
            Figure(
                f"Sweep {name}",
                figures.sweep_lines(sweep.summary, fig_dir / f"sweep_{name}.png", baselines),
                f"Test top-1 against {sweep.summary['keys'][0]}; error bars: std over seeds"
                + (
                    "; dotted: the same student from scratch (mean): "
                    + "; ".join(label for label, _ in baselines)
                    + "."
                    if baselines
                    else "."
                ),
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
            label = g.label
            if g.first.epochs != student.epochs:  # another budget: say so on the figure
                label += f", {g.first.epochs} epochs against the sweep's {student.epochs}"
            out.append((label, stat["mean"]))
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
    datasets = by_dataset(collection.groups)
    for dataset, groups in datasets.items():
        heading = f"Models: {dataset}" if len(datasets) > 1 else "Models"
        if any(is_language_model(g) for g in groups):
            header, rows = language_model_table(groups)
            note = (
                "Test perplexity is the final model's on the test split's tokens; with several "
                "seeds it is mean ± std (range). Bits per byte divide the test split's total "
                "negative log-likelihood by its UTF-8 bytes: comparable across tokenizers."
            )
        else:
            header, rows = model_table(groups)
            note = (
                "Test top-1 is the final epoch's; with several seeds it is mean ± std "
                "(worst-best), as in published KD tables. CPU latency: median over repeated "
                "passes, IQR in brackets (compare runs timed on the same machine)."
            )
        md += [f"## {heading}", "", _md_table(header, rows), "", note, ""]
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows)]
        body.append(f"<p>{html.escape(note)}</p>")
        for title_p, header_p, rows_p in pruning_tables(groups):
            md += [f"## {title_p}", "", _md_table(header_p, rows_p), ""]
            body += [f"<h2>{html.escape(title_p)}</h2>", _html_table(header_p, rows_p)]
        said = continuations(groups)
        if said:
            title_c = "Greedy continuations" + (f": {dataset}" if len(datasets) > 1 else "")
            md += [f"## {title_c}", ""]
            body.append(f"<h2>{html.escape(title_c)}</h2>")
            for prompt, lines in said.items():
                md += [f"**{prompt!r}**", ""] + [f"- {who}: {text!r}" for who, text in lines]
                md.append("")
                items = "".join(
                    f"<li>{html.escape(who)}: <code>{html.escape(repr(text))}</code></li>"
                    for who, text in lines
                )
                body.append(f"<p><b>{html.escape(repr(prompt))}</b></p><ul>{items}</ul>")
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
