"""``run``: one training run of a config and seed, read top to bottom in :func:`_run`."""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.config.loader import dump_yaml
from kdistill.config.schema import RunConfig
from kdistill.engine.callbacks import Agreement, CollapseGuard
from kdistill.engine.checkpoint import Checkpoint, Checkpointer
from kdistill.engine.console import Console
from kdistill.engine.distributed import (
    DistContext,
    PeerFailureError,
    all_reduce_sum,
    barrier,
    init_from_env,
    is_peer_failure,
    shutdown,
    world_size,
)
from kdistill.engine.recorder import MetricsLog
from kdistill.engine.trainer import (
    Callback,
    CollapseError,
    NonFiniteLossError,
    Trainer,
    TrainingError,
)
from kdistill.experiment.assembly import RunParts, build_run, resolve_device
from kdistill.experiment.finish import finish_run
from kdistill.experiment.health import collapse_advice
from kdistill.experiment.lm import teacher_weights_file
from kdistill.experiment.loading import load_model
from kdistill.experiment.options import RunOptions
from kdistill.experiment.rundir import (
    RunDirError,
    claim_run_dir,
    link_latest,
    run_dir_for,
    run_identity,
)
from kdistill.extras import available, install_hint
from kdistill.files import (
    CONFIG,
    RECORD,
    STOPPED,
    TENSORBOARD,
    atomic_write_text,
    sha256_file,
)
from kdistill.models import resolve_model
from kdistill.record import RunRecord
from kdistill.trust import CodeTrust

Log = Callable[[str], None]


@dataclass
class RunResult:
    """Where a run lives and its record (``None`` on the processes of a data-parallel run that
    do not write)."""

    run_dir: Path
    record: RunRecord | None

    @property
    def summary(self) -> dict[str, Any]:
        """The record as plain data (what ``summary.json`` holds); empty without a record."""
        return self.record.to_dict() if self.record is not None else {}


def run(cfg: RunConfig, options: RunOptions | None = None, **settings: Any) -> RunResult:
    """Train one run of ``cfg`` (one seed) and write its directory. See ``docs/cli.md``.

    Args:
        cfg: the config.
        options: how the run is carried out (:class:`RunOptions`: resume, force, progress,
            log, callbacks, trust_code, link, threads); ``settings`` may give them as keywords
            instead (``run(cfg, resume=True, log=print)``).

    Launched by ``torchrun`` with several processes, the student trains data-parallel (DDP) and
    only the first process writes files and logs.
    """
    options = RunOptions.of(options, **settings)
    dist_ctx = init_from_env(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _run(cfg, options, dist_ctx)
    except RuntimeError as exc:
        if dist_ctx is not None and is_peer_failure(exc):
            raise PeerFailureError(dist_ctx.rank, exc) from exc
        raise
    finally:
        if dist_ctx is not None:
            shutdown()


def _quiet(_message: str) -> None:
    return None


def _run(cfg: RunConfig, options: RunOptions, dist_ctx: DistContext | None) -> RunResult:
    """The run, as a recipe: claim the directory, build the parts, restore a checkpoint, train,
    finish (files, export, record)."""
    started = time.perf_counter()
    main = dist_ctx is None or dist_ctx.is_main
    if not main:
        options = replace(options, log=_quiet, progress=False)
    log = options.log
    run_dir = run_dir_for(cfg)
    resolve_device(cfg.train.device, dist_ctx)  # a device this machine lacks: stop before mkdir
    if options.resume and not options.force and (run_dir / RECORD).is_file():
        return _already_finished(cfg, run_dir, main=main, link=options.link, log=log)
    claim = (
        claim_run_dir(cfg, resume=options.resume, force=options.force, log=log) if main else None
    )
    with claim or contextlib.nullcontext(None) as checkpoint:
        barrier()  # the others wait until the directory is claimed (and moved aside by --force)
        if not main and options.resume:
            checkpoint = Checkpointer.latest(run_dir)
        parts = build_run(
            cfg,
            options,
            dist_ctx=dist_ctx,
            resume_from=checkpoint.model_file if checkpoint is not None else None,
            teacher_precision=checkpoint.info.get("teacher_precision") if checkpoint else None,
        )
        info = run_info(cfg, parts)
        if checkpoint is not None:
            parts = restore_run_info(checkpoint, info, parts, run_dir)
        if main:
            atomic_write_text(run_dir / CONFIG, dump_yaml(cfg))
            (run_dir / STOPPED).unlink(missing_ok=True)  # a resumed run is no longer stopped
        trainer, guard = _trainer(cfg, parts, options, run_dir, info, main)
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint.training_state())
            for reason in checkpoint.skipped:
                log(f"passing over the checkpoint {reason}")
            log(f"resuming {run_dir} after epoch {trainer.state.epoch} ({checkpoint.path.name})")
        setup_s = time.perf_counter() - started
        try:
            trainer.fit()
        except TrainingError as e:
            if main:
                write_stopped(run_dir, trainer, e)
            raise
        if dist_ctx is not None:
            _pool_generation_counts(parts.objective, parts.device)
        if not main:
            barrier()  # until the first process has written the results
            return RunResult(run_dir, None)
        if parts.loop.sharded:  # finish with the whole student its last checkpoint holds
            trainer.objective.student = unsharded_student(run_dir, parts)
        record = finish_run(
            parts,
            trainer,
            run_dir,
            Checkpointer.latest(run_dir),
            setup_s=setup_s,
            warnings=[*parts.warnings, *guard.warnings],
            log=log,
        )
        if options.link:
            link_latest(cfg, run_dir)
    if dist_ctx is not None:
        barrier()
    return RunResult(run_dir, record)


def _pool_generation_counts(objective: Any, device: Any) -> None:
    """On-policy distillation in a data-parallel run: each process counted its own samples;
    the record states the run's, so every process adds its counts to the others' (the
    batches and tokens of all; the seconds of one, as the processes generate side by side)."""
    if not hasattr(objective, "generation_stats"):
        return
    batches, tokens, seconds = all_reduce_sum(
        [objective.on_policy_batches, objective.generated_tokens, objective.generation_s], device
    )
    objective.on_policy_batches, objective.generated_tokens = int(batches), int(tokens)
    objective.generation_s = seconds / world_size()


def _trainer(
    cfg: RunConfig,
    parts: RunParts,
    options: RunOptions,
    run_dir: Path,
    info: Mapping[str, Any],
    main: bool,
) -> tuple[Trainer, CollapseGuard]:
    """The trainer of the run with its callbacks, in the order they act: compression, the
    config's and the caller's, agreement with the teacher, the metrics log, the console, the
    collapse guard, and last the checkpoints (the epoch a health check stops at is recorded and
    shown, not checkpointed)."""
    guard = CollapseGuard(cfg.train.on_collapse, options.log, collapse_advice(cfg))
    checkpoints = Checkpointer(
        run_dir,
        keep=cfg.train.keep_checkpoints,
        describe=parts.student_spec,
        info=info,
        enabled=main,
    )
    metrics = MetricsLog(
        run_dir,
        tensorboard_dir=tensorboard_dir(run_dir) if tensorboard(cfg, options.log, main) else None,
        hparams=hparams(cfg),
        config_text=dump_yaml(cfg),
        enabled=main,
    )
    trainer = Trainer(
        parts.objective,
        parts.optimizer_factory,
        parts.train_loader,
        parts.eval_loaders,
        parts.loop,
        callbacks=[
            *parts.compression,
            *load_callbacks(cfg.train.callbacks),
            *options.callbacks,
            *teacher_agreement(parts),
            metrics,
            Console(options.log, progress=options.progress),
            guard,
            checkpoints,
        ],
    )
    return trainer, guard


def unsharded_student(run_dir: Path, parts: RunParts) -> nn.Module:
    """The student of a sharded (FSDP2) run, whole, as its last checkpoint holds it (the
    weights every process gathered after the last epoch): what the first process finishes the
    run with, alone (its files, continuations and latency need no other process)."""
    latest = Checkpointer.latest(run_dir)
    assert latest is not None, "a checkpoint is written after every epoch"
    spec = parts.student_spec(parts.objective.student)
    model = load_model(latest.model_file, trust=CodeTrust(frozenset({spec.arch}))).model
    return model.to(parts.device).train()


def write_stopped(run_dir: Path, trainer: Trainer, error: TrainingError) -> None:
    """``stopped.json``: the epoch a health check stopped the run at (1-based), why, and the
    checkpoint a ``--resume`` would continue from. The stopping epoch of a collapse is the
    last line of ``metrics.jsonl``; a non-finite loss stops within its epoch, which has none."""
    kind = {CollapseError: "collapse", NonFiniteLossError: "non_finite_loss"}.get(
        type(error), type(error).__name__
    )
    epoch = trainer.state.epoch if isinstance(error, CollapseError) else trainer.state.epoch + 1
    last_good = Checkpointer.latest(run_dir)
    stopped = {
        "stopped": kind,
        "epoch": epoch,
        "message": str(error),
        "last_good_checkpoint": last_good.path.name if last_good is not None else None,
    }
    atomic_write_text(run_dir / STOPPED, json.dumps(stopped, indent=2) + "\n")


def _already_finished(
    cfg: RunConfig, run_dir: Path, *, main: bool, link: bool, log: Log
) -> RunResult:
    """``--resume`` of a run that finished: its record (checked), nothing trained."""
    record = RunRecord.read(run_dir)
    log(f"{run_dir} has already finished; nothing to resume")
    if link and main:
        link_latest(cfg, run_dir)
    return RunResult(run_dir, record if main else None)


def teacher_agreement(parts: RunParts) -> list[Callback]:
    """Agreement with the teacher on the eval splits: the frozen teacher's test predictions
    from its check are reused; a teacher trained jointly is asked again at every evaluation."""
    if parts.teacher is None:
        return []
    if parts.teacher.joint:
        return [Agreement(predict=parts.teacher.predict)]
    assert parts.teacher_check is not None
    if parts.teacher.loaded[0].tokenizer is not None:  # its tokens are not the student's
        return []
    return [Agreement(reference={"test": parts.teacher_check.test.predictions})]


def run_info(cfg: RunConfig, parts: RunParts) -> dict[str, Any]:
    """What identifies a run beyond its directory, kept in its checkpoints: the config's
    identity, which teacher weights it learns from, what the health check before the first
    epoch found, and the teacher precision it began with."""
    teachers = parts.teacher.identities if parts.teacher is not None else ()
    return {
        "config_hash": run_identity(cfg),
        "teachers": [
            {"reference": t.reference, "file": t.file, "sha256": t.sha256} for t in teachers
        ],
        "health": {"kd_gradient_ratio": parts.kd_gradient_ratio, "warnings": list(parts.warnings)},
        # kd.teacher_precision: auto is chosen once, when the run begins; a resume keeps it
        "teacher_precision": parts.teacher.precision.precision
        if parts.teacher is not None and parts.teacher.precision is not None
        else None,
    }


def restore_run_info(
    checkpoint: Checkpoint, info: dict[str, Any], parts: RunParts, run_dir: Path
) -> RunParts:
    """Resuming: the checkpoint must be of the same run (config, teacher weights); the health
    findings of its first session carry over (into ``info`` and the returned parts)."""
    check_same_run(checkpoint, info, run_dir)
    health = dict(checkpoint.info.get("health", {}))
    info["health"] = health
    return replace(
        parts,
        kd_gradient_ratio=health.get("kd_gradient_ratio"),
        warnings=tuple(health.get("warnings", [])),
    )


def check_same_run(checkpoint: Checkpoint, info: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to continue a checkpoint with other teacher weights than it was made with."""
    saved = checkpoint.info
    if saved.get("config_hash") not in (None, info["config_hash"]):
        raise RunDirError(
            f"--resume: the checkpoint in {checkpoint.path} was made with another config "
            f"({saved.get('config_hash')}, now {info['config_hash']})"
        )
    before = {t["reference"]: t for t in saved.get("teachers", [])}
    for now in info["teachers"]:
        then = before.get(now["reference"])
        if then is not None and then["sha256"] != now["sha256"]:
            raise RunDirError(
                f"--resume: {run_dir} was trained with the teacher {now['reference']} -> "
                f"{then['file']} (sha256 {then['sha256'][:12]}), but {now['reference']} now "
                f"resolves to {now['file']} (sha256 {now['sha256'][:12]}): other weights. Point "
                "the config at the original teacher file to continue, or --force to start over"
            )


def check_same_teachers(cfg: RunConfig, record: RunRecord) -> None:
    """Refuse to reuse a finished run whose teacher references now resolve to other weights."""
    if cfg.kd is None or record.legacy:
        return
    before = {t.reference: t for t in record.teachers}
    for t in cfg.kd.teachers:
        if t.checkpoint is None or t.checkpoint not in before:
            continue
        file = (
            teacher_weights_file(t.checkpoint)
            if cfg.data.is_text
            else resolve_model(t.checkpoint).file
        )
        digest = sha256_file(file)
        if digest != before[t.checkpoint].sha256:
            then = before[t.checkpoint]
            raise RunDirError(
                f"{record.run_dir} was trained with the teacher {t.checkpoint} -> {then.file} "
                f"(sha256 {then.sha256[:12]}), but it now resolves to {file.resolve()} (sha256 "
                f"{digest[:12]}): pass --force to train it again with the new teacher"
            )


def train_or_reuse(
    cfg: RunConfig, options: RunOptions | None = None, **settings: Any
) -> tuple[RunResult, bool]:
    """A finished run of ``cfg`` (checked, and taught by the same teacher weights), or a new
    one (``resume``, the default here: continued from its checkpoint if it has one); returns
    the result and whether it was reused. ``force`` trains it again (the old run is moved
    aside). ``options`` / ``settings`` as for :func:`run`."""
    options = RunOptions.of(options or RunOptions(resume=True), **settings)
    run_dir = run_dir_for(cfg)
    if not options.force and (run_dir / RECORD).is_file():
        record = RunRecord.read(run_dir)
        check_same_teachers(cfg, record)
        return RunResult(run_dir, record), True
    result = run(cfg, replace(options, resume=options.resume and not options.force))
    return result, False


def load_callbacks(paths: Sequence[str]) -> list[Callback]:
    """Instances of the ``package.module:Name`` callbacks of ``train.callbacks``."""
    out = []
    for path in paths:
        module_name, _, attr = path.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"train.callbacks: cannot load {path!r} ({e})") from None
        callback = factory()
        if not isinstance(callback, Callback):
            raise ValueError(
                f"train.callbacks: {path!r} made a {type(callback).__name__}, not a kdistill Callback"
            )
        out.append(callback)
    return out


_TENSORBOARD_NOTED = False  # said once per process, not once per run of a demo or sweep


def tensorboard(cfg: RunConfig, log: Log, main: bool) -> bool:
    """Whether to write TensorBoard events: asked for and installed (an optional extra; without
    it the run goes on and says so once)."""
    if not cfg.train.tensorboard:
        return False
    if available("tensorboard"):
        return True
    global _TENSORBOARD_NOTED
    if main and not _TENSORBOARD_NOTED:
        _TENSORBOARD_NOTED = True
        log(
            f"TensorBoard events not written: tensorboard is not installed ({install_hint('tensorboard')})"
        )
    return False


def tensorboard_dir(run_dir: Path) -> Path:
    """``<out_dir>/tensorboard/<run>/seed-N``: TensorBoard's view of the runs, outside the
    directories that ``<out_dir>/<name>`` links point into (so each run shows once)."""
    return run_dir.parent.parent / TENSORBOARD / run_dir.parent.name / run_dir.name


def hparams(cfg: RunConfig) -> dict[str, Any]:
    """The settings that tell runs apart in TensorBoard's hparams table."""
    out: dict[str, Any] = {
        "name": cfg.name,
        "model.arch": cfg.model.arch or "",
        "data.name": cfg.data.name,
        "data.batch_size": cfg.data.batch_size,
        "optim.name": cfg.optim.name,
        "optim.lr": cfg.optim.lr,
        "train.epochs": cfg.train.epochs,
        "train.seed": cfg.train.seed,
        "policies": ",".join(p.kind for p in cfg.policies) or "none",
    }
    if cfg.kd is not None:
        out.update(
            {
                "kd.temperature": cfg.kd.temperature,
                "kd.alpha": cfg.kd.alpha,
                "kd.beta": cfg.kd.resolved_beta,
                "kd.methods": ",".join(m.name for m in cfg.kd.methods) or "kd",
                "kd.teachers": len(cfg.kd.teachers),
            }
        )
    return out
