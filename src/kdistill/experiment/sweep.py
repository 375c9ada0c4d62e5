"""Sweeps: many settings of one run config, each for several seeds, resumable.

Every (setting, seed) is an ordinary run with its own run directory under
``<sweep dir>/runs/``; a finished run is never trained again, an interrupted one resumes from
its checkpoint. With ``share_teacher`` the teacher-output cache is on in every run, so all
settings that share the teacher's outputs (temperature, weights, learning rate, ...) read the
outputs computed once. A search keeps its Optuna study in ``<sweep dir>/optuna.db``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kdistill.config import (
    RunConfig,
    apply_overrides,
    apply_values,
    from_dict,
    read_yaml,
    resolve_config_path,
    to_dict,
)
from kdistill.config.sweep import ParamSpec, SweepConfig, parse_param
from kdistill.extras import require
from kdistill.files import (
    RECORD,
    SWEEP,
    SWEEP_STUDY,
    SWEEP_TABLE,
    atomic_path,
    atomic_write_text,
)
from kdistill.hardware import ThreadChoice, choose_threads
from kdistill.processes import die_with_parent
from kdistill.reporting.aggregate import describe
from kdistill.reporting.report import sweep_table

Log = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    """One run of the sweep: a setting and a seed."""

    trial: int
    setting: dict[str, Any]
    seed: int
    config: RunConfig


def resolve_base(sweep: SweepConfig, base_dir: Path) -> RunConfig:
    """The base run config of a sweep, with its overrides applied."""
    candidate = base_dir / sweep.base
    path = candidate if candidate.is_file() else resolve_config_path(sweep.base)
    cfg = apply_overrides(from_dict(RunConfig, read_yaml(path)), sweep.overrides)
    # A language model's cache holds top-k tokens, which only the forward KL reads, and a grid
    # may vary kd.token_loss: its sweeps use the cache only when the base config asks for it.
    if (
        sweep.share_teacher
        and cfg.kd is not None
        and cfg.kd.teacher_weight == 0
        and not cfg.data.is_text
    ):
        cfg = apply_values(cfg, {"kd.teacher_cache.enabled": True})
    return cfg


def sweep_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.out_dir) / sweep.name


def default_parallel() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


def make_task(
    base: RunConfig, sweep: SweepConfig, trial: int, setting: Mapping[str, Any], seed: int
) -> Task:
    cfg = apply_values(
        base, {**setting, "train.seed": seed, "out_dir": str(sweep_dir(sweep) / "runs")}
    )
    # the setting as the config holds it (typed: "1e-3" given on a command line is 0.001)
    values = to_dict(cfg)
    typed = {}
    for key in setting:
        node: Any = values
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        typed[key] = node
    return Task(trial, typed, seed, cfg)


def _execute(task: Task, threads: ThreadChoice, trust_code: bool = False) -> dict[str, Any]:
    """Run (or resume, or reuse) one task; runs in a worker process when trials are parallel.

    Returns the run record as a dict, or for a run that fails (NaN loss, collapse) its message
    (``failed``, and ``collapsed`` when the student collapsed): the sweep goes on.
    """
    from kdistill.engine.trainer import CollapseError, TrainingError
    from kdistill.experiment.runner import train_or_reuse

    try:
        result, _ = train_or_reuse(
            task.config, progress=False, log=lambda _: None, trust_code=trust_code, link=False,
            threads=threads,
        )  # fmt: skip
    except TrainingError as e:
        failure = {"failed": str(e), "run_dir": str(run_dir_of(task)), "seed": task.seed}
        return {**failure, "collapsed": isinstance(e, CollapseError)}
    assert result.record is not None
    record = result.record.to_dict()
    record["collapsed"] = any("collapsed" in w for w in record["warnings"])
    return record


def run_dir_of(task: Task) -> Path:
    from kdistill.experiment.rundir import run_dir_for

    return run_dir_for(task.config)


def _worker_start(threads: ThreadChoice) -> None:
    """A sweep worker: stops when the sweep's process dies, uses its share of the cores."""
    die_with_parent()
    import torch

    torch.set_num_threads(threads.threads)


def run_tasks(
    tasks: Sequence[Task],
    parallel: int,
    log: Log,
    trust_code: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Outcomes of ``tasks`` (in order), ``parallel`` at a time, each on ``threads`` CPU
    threads (``None``: the machine's cores shared by the parallel runs, leaving busy ones
    alone). Interrupting the sweep terminates its workers (their runs resume from their last
    checkpoint next time)."""
    threads = choose_threads(threads, share=parallel)
    log(f"each run: {threads.describe()}")
    results: list[dict[str, Any]] = []
    if parallel == 1:
        for task in tasks:
            results.append(_execute(task, threads, trust_code))
            _log_task(task, results[-1], log)
        return results
    pool = get_context("spawn").Pool(parallel, initializer=_worker_start, initargs=(threads,))
    try:
        pending = [pool.apply_async(_execute, (task, threads, trust_code)) for task in tasks]
        for task, outcome in zip(tasks, pending, strict=True):
            results.append(outcome.get())
            _log_task(task, results[-1], log)
        pool.close()
    except BaseException:
        pool.terminate()  # no worker trains on after the sweep is stopped
        raise
    finally:
        pool.join()
    return results


def _log_task(task: Task, summary: Mapping[str, Any], log: Log) -> None:
    setting = ", ".join(f"{k}={v}" for k, v in task.setting.items())
    if "failed" in summary:
        what = "COLLAPSED" if summary.get("collapsed") else "FAILED"
        log(f"trial {task.trial} seed {task.seed} [{setting}]: {what}: {summary['failed']}")
    else:
        log(
            f"trial {task.trial} seed {task.seed} [{setting}]: test top-1 {summary['test_top1']:.2%} ({summary['total_time_s']:.0f}s)"
        )
        for warning in summary.get("warnings", []):
            log(f"  WARNING: {warning}")


def metric_name(sweep: SweepConfig, base: RunConfig) -> str:
    if sweep.metric != "auto":
        return sweep.metric
    return "val_top1" if base.data.val_fraction > 0 else "test_top1"


def run_sweep(
    sweep: SweepConfig,
    base_dir: Path,
    *,
    log: Log = print,
    trust_code: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sweep; returns and writes its summary. ``trust_code``: as for
    :func:`kdistill.experiment.run`, in every trial; ``threads``: CPU threads per run
    (``None``: chosen from the machine, see :func:`run_tasks`)."""
    base = resolve_base(sweep, base_dir)
    out = sweep_dir(sweep)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / SWEEP, json.dumps({"sweep": to_dict(sweep), "base": to_dict(base)}, indent=2)
    )
    parallel = sweep.parallel or default_parallel()
    started = time.perf_counter()
    if sweep.search is None:
        settings = sweep.grid_settings()
        tasks = [
            make_task(base, sweep, i, s, seed)
            for i, s in enumerate(settings)
            for seed in sweep.seeds
        ]
        log(
            f"sweep {sweep.name}: {len(settings)} settings x {len(sweep.seeds)} seeds, {parallel} at a time"
        )
        summaries = run_tasks(tasks, parallel, log, trust_code, threads)
    else:
        tasks, summaries = _run_search(sweep, base, parallel, log, trust_code, threads)
    rows = summarize(tasks, summaries, metric_name(sweep, base))
    result = {
        "name": sweep.name,
        "kind": "grid" if sweep.search is None else "search",
        "metric": metric_name(sweep, base),
        "keys": list(sweep.grid) if sweep.search is None else list(sweep.search.space),
        "seeds": list(sweep.seeds),
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
    }
    teacher = next(
        (s["teacher_test_top1"] for s in summaries if s.get("teacher_test_top1") is not None), None
    )
    if teacher is not None:
        result["teacher_test_top1"] = teacher
    write_summary(out, result)
    log(format_rows(result))
    log(f"sweep summary written to {out / SWEEP_TABLE} and {out / RECORD}")
    return result


def _run_search(
    sweep: SweepConfig,
    base: RunConfig,
    parallel: int,
    log: Log,
    trust_code: bool,
    threads: int | None = None,
) -> tuple[list[Task], list[dict[str, Any]]]:
    optuna = require("optuna", "sweep")
    from optuna.trial import TrialState

    search = sweep.search
    assert search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = [parse_param(k, v) for k, v in search.space.items()]
    distributions = {p.key: _distribution(p) for p in params}
    sampler = (
        optuna.samplers.TPESampler(seed=search.seed)
        if search.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=search.seed)
    )
    storage = f"sqlite:///{(sweep_dir(sweep) / SWEEP_STUDY).resolve()}"
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # interrupted by a previous invocation: propose the same setting again (its runs resume)
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)
    metric = metric_name(sweep, base)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    log(f"search {sweep.name}: {completed} of {search.trials} trials done, {parallel} at a time")
    while completed < search.trials:
        batch = [study.ask(distributions) for _ in range(min(parallel, search.trials - completed))]
        tasks = [
            make_task(base, sweep, t.number, t.params, seed) for t in batch for seed in sweep.seeds
        ]
        summaries = run_tasks(tasks, parallel, log, trust_code, threads)
        for t in batch:
            runs = [s for task, s in zip(tasks, summaries, strict=True) if task.trial == t.number]
            if any("failed" in s for s in runs):
                study.tell(t, state=TrialState.FAIL)
            else:
                study.tell(t, sum(s[metric] for s in runs) / len(runs))
        completed += len(batch)
    all_tasks, all_summaries = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for seed in sweep.seeds:
            task = make_task(base, sweep, t.number, t.params, seed)
            all_tasks.append(task)
            all_summaries.append(_execute(task, None))  # finished: reads its run record
    return all_tasks, all_summaries


def _distribution(p: ParamSpec):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.choices is not None:
        return CategoricalDistribution(p.choices)
    if p.integer:
        return IntDistribution(int(p.low), int(p.high), log=p.log)  # type: ignore[arg-type]
    return FloatDistribution(p.low, p.high, log=p.log)  # type: ignore[arg-type]


def summarize(
    tasks: Sequence[Task], summaries: Sequence[Mapping[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """One row per setting: mean, std, best and worst of test top-1 over seeds; time."""
    by_trial: dict[int, list[tuple[Task, Mapping[str, Any]]]] = {}
    for task, summary in zip(tasks, summaries, strict=True):
        by_trial.setdefault(task.trial, []).append((task, summary))
    rows = []
    for trial, items in sorted(by_trial.items()):
        ok = [s for _, s in items if "failed" not in s]
        collapsed = sum(1 for _, s in items if s.get("collapsed"))
        row: dict[str, Any] = {
            "trial": trial,
            **items[0][0].setting,
            "n_seeds": len(ok),
            "n_failed": len(items) - len(ok),
            "n_collapsed": collapsed,
            "status": "collapsed" if collapsed else ("failed" if len(ok) < len(items) else "ok"),
        }
        if ok:
            top1 = describe([s["test_top1"] for s in ok])
            row.update(
                test_top1_mean=top1["mean"],
                test_top1_std=top1["std"],
                test_top1_best=top1["best"],
                test_top1_worst=top1["worst"],
                time_s_mean=describe([s["total_time_s"] for s in ok])["mean"],
            )
            if metric != "test_top1":
                row[f"{metric}_mean"] = describe([s[metric] for s in ok])["mean"]
            if all(s.get("test_perplexity") is not None for s in ok):  # language models
                perplexity = describe([s["test_perplexity"] for s in ok])
                row.update(
                    test_perplexity_mean=perplexity["mean"], test_perplexity_std=perplexity["std"]
                )
        else:
            row.update(
                test_top1_mean=None,
                test_top1_std=None,
                test_top1_best=None,
                test_top1_worst=None,
                time_s_mean=None,
            )
        row["failures"] = [s["failed"] for _, s in items if "failed" in s]
        row["run_dirs"] = [s["run_dir"] for _, s in items]
        rows.append(row)
    return rows


def write_summary(out: Path, result: Mapping[str, Any]) -> None:
    atomic_write_text(out / RECORD, json.dumps(result, indent=2, default=str) + "\n")
    rows = result["rows"]
    fields = [k for k in rows[0] if k not in ("run_dirs", "failures")] if rows else []
    with atomic_path(out / SWEEP_TABLE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def format_rows(result: Mapping[str, Any]) -> str:
    """The sweep's table (the report's, :func:`~kdistill.reporting.report.sweep_table`) as
    aligned text for the console."""
    header, rows = sweep_table(result)
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in lines]
    return "test top-1 over seeds, best setting first:\n" + "\n".join(text)
