"""Finding and grouping run records: the only input of reports.

A *run* is a directory with ``summary.json`` and ``metrics.jsonl``; runs with the same name and
config (all seeds of one setting) form a *group*; a *sweep* is a directory with ``sweep.json``
and ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.files import METRICS, MODEL, RECORD, SWEEP, read_json, read_jsonl
from kdistill.record import RunRecord
from kdistill.reporting.aggregate import describe


@dataclass
class Run:
    path: Path
    summary: RunRecord
    metrics: list[dict[str, Any]]


@dataclass
class Group:
    """All seeds of one config."""

    key: tuple[str, str]
    runs: list[Run] = field(default_factory=list)
    role: str = "student"
    label: str = ""

    @property
    def first(self) -> RunRecord:
        return self.runs[0].summary

    def stat(self, key: str) -> dict[str, Any] | None:
        values = [r.summary.get(key) for r in self.runs if r.summary.get(key) is not None]
        return describe(values) if values else None

    def curve(
        self, split: str, metric: str
    ) -> tuple[list[int], list[float], list[float], list[float]]:
        """(epochs, mean, min, max) over seeds of ``metrics[split][metric]`` per epoch."""
        epochs = min(len(r.metrics) for r in self.runs)
        xs, mean, lo, hi = [], [], [], []
        for e in range(epochs):
            vals = [r.metrics[e].get(split, {}).get(metric) for r in self.runs]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            xs.append(e + 1)
            mean.append(sum(vals) / len(vals))
            lo.append(min(vals))
            hi.append(max(vals))
        return xs, mean, lo, hi


@dataclass
class Sweep:
    path: Path
    summary: dict[str, Any]


@dataclass
class Collection:
    groups: list[Group]
    sweeps: list[Sweep]


def _is_run(path: Path) -> bool:
    return (path / RECORD).is_file() and (path / METRICS).is_file()


def _is_sweep(path: Path) -> bool:
    return (path / SWEEP).is_file() and (path / RECORD).is_file()


def load_run(path: Path) -> Run:
    """A finished run: its record and per-epoch metrics, both checked against the record."""
    record = RunRecord.read(path)
    return Run(path, record, read_jsonl(path / METRICS, "metrics file"))


def _walk(path: Path) -> Iterable[Path]:
    """Run and sweep directories under ``path`` (``path`` itself included); links are skipped
    inside trees (they point at runs found anyway), but a link given directly is followed."""
    if _is_run(path):
        yield path
        return
    if _is_sweep(path):
        yield path
        return  # its runs are summarized by the sweep's own table and figures
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
        if not child.name.startswith("."):  # .replaced/ (runs moved aside by --force)
            yield from _walk(child)


def collect(paths: Sequence[str | Path]) -> Collection:
    """Every run and sweep under ``paths``, runs grouped by (name, config hash)."""
    runs: dict[Path, Run] = {}
    sweeps: dict[Path, Sweep] = {}
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        found = list(_walk(p.resolve()))
        if not found:
            raise ValueError(f"{p} holds no finished kdistill run or sweep (no summary.json found)")
        for d in found:
            if _is_sweep(d):
                sweeps[d] = Sweep(d, read_json(d / RECORD, "sweep summary"))
            else:
                runs[d] = load_run(d)
    groups: dict[tuple[str, str], Group] = {}
    for run in runs.values():
        key = (str(run.summary.get("name")), _group_id(run))
        groups.setdefault(key, Group(key)).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.summary.get("seed", 0))
    _assign_roles(
        list(groups.values()), [r.summary for r in runs.values()] + _sweep_run_summaries(sweeps)
    )
    names = [g.key[0] for g in groups.values()]
    for g in groups.values():
        # several configs under one name: tell them apart by their config hash
        g.label = (
            g.key[0]
            if names.count(g.key[0]) == 1
            else f"{g.key[0]} [{g.key[1].rsplit('-', 1)[-1][:6]}]"
        )
    return Collection(sorted(groups.values(), key=_order), list(sweeps.values()))


def _group_id(run: Run) -> str:
    # The group directory (<name>-<hash of the config without the seed>) identifies the setting.
    return run.path.parent.name


def _sweep_run_summaries(sweeps: Mapping[Path, Sweep]) -> list[RunRecord]:
    """The records of the runs inside sweeps: they name the teachers of the sweep."""
    return [
        RunRecord.read(p, verify_files=False)
        for d in sweeps
        for p in sorted((d / "runs").glob(f"*/seed-*/{RECORD}"))
    ]


def _assign_roles(groups: list[Group], summaries: list[RunRecord]) -> None:
    """A run that some distilled run (or sweep) was taught by is a teacher."""
    teacher_paths = set()
    for summary in summaries:
        for t in summary.teachers:
            for named in (t.file, t.run_dir):
                if named:
                    teacher_paths.add(Path(named).resolve())
    for g in groups:
        if g.first.get("mode") == "distill":
            g.role = "distilled"
        elif any(r.path in teacher_paths or (r.path / MODEL) in teacher_paths for r in g.runs):
            g.role = "teacher"
        else:
            g.role = "scratch"


def _order(g: Group) -> tuple[int, str]:  # teachers first, then scratch, then distilled
    return ({"teacher": 0, "scratch": 1, "distilled": 2}.get(g.role, 3), g.label)
