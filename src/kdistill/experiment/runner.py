"""``run``: one training run of a config and seed, from its parts to its run directory."""

from __future__ import annotations

import gzip
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill._version import __version__
from kdistill.compression.callbacks import build_callbacks as build_compression_callbacks
from kdistill.config.loader import config_hash, dump_yaml
from kdistill.config.schema import RunConfig
from kdistill.data import DataBundle, build_data
from kdistill.engine.checkpoint import (
    ModelSpec,
    latest_checkpoint,
    load_training_state,
    load_weights,
    save_checkpoint,
    save_model_file,
)
from kdistill.engine.distributed import (
    DistContext,
    PeerFailureError,
    barrier,
    init_from_env,
    is_peer_failure,
    shutdown,
)
from kdistill.engine.profile import count_macs, count_params, cpu_latency_ms
from kdistill.engine.recorder import RunRecorder
from kdistill.engine.schedule import build_lr_factor
from kdistill.engine.trainer import (
    Callback,
    Trainer,
    TrainState,
    rng_state,
    set_rng_state,
)
from kdistill.experiment.components import (
    Log,
    build_eval_loaders,
    build_objective,
    build_optimizer,
    build_student,
    build_teacher,
    build_train_loader,
    check_teacher,
    code_trust,
    configure_torch,
    evaluate_model,
    joint_teacher_network,
    resolve_device,
    teacher_predictor,
)
from kdistill.experiment.rundir import RunDirError, link_latest, prepare_run_dir, run_dir_for
from kdistill.losses.functional import gradient_norms
from kdistill.teacher_cache import prepare_teacher_cache
from kdistill.teachers import logits_of
from kdistill.trust import CodeTrust

LATENCY_BATCHES = (1, 128)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def run(
    cfg: RunConfig,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log: Log = print,
    callbacks: Sequence[Callback] = (),
    trust_code: bool = False,
) -> RunResult:
    """Train one run of ``cfg`` (one seed) and write its directory. See ``docs/cli.md``.

    Model files (teachers, ``model.checkpoint``) may name import-path architectures only when
    ``cfg`` writes the same path itself, or with ``trust_code`` (see :mod:`kdistill.trust`).

    Launched by ``torchrun`` with several processes, the student trains data-parallel (DDP) and
    only the first process writes files and logs; the others return an empty summary.
    """
    dist_ctx = init_from_env(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _run(
            cfg,
            dist_ctx,
            resume=resume,
            force=force,
            progress=progress,
            log=log,
            callbacks=callbacks,
            trust=code_trust(cfg, trust_code),
        )
    except RuntimeError as exc:
        if dist_ctx is not None and is_peer_failure(exc):
            raise PeerFailureError(dist_ctx.rank, exc) from exc
        raise
    finally:
        if dist_ctx is not None:
            shutdown()


def _quiet(_message: str) -> None:
    return None


def _run(
    cfg: RunConfig,
    dist_ctx: DistContext | None,
    *,
    resume: bool,
    force: bool,
    progress: bool,
    log: Log,
    callbacks: Sequence[Callback],
    trust: CodeTrust,
) -> RunResult:
    started = time.perf_counter()
    main = dist_ctx is None or dist_ctx.is_main
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else (0, 1)
    if not main:
        log, progress = _quiet, False
    run_dir = run_dir_for(cfg)
    if main:
        prepare_run_dir(run_dir, resume=resume, force=force)
    barrier()  # the others wait until the directory has been checked (and cleared with --force)
    configure_torch(cfg, dist_ctx)
    device = resolve_device(cfg.train.device, dist_ctx)
    data = build_data(cfg.data)
    student, spec = build_student(cfg, data, trust)
    eval_loaders = build_eval_loaders(cfg, data, device, rank=rank, world_size=world)
    if world > 1:
        log(
            f"data-parallel training on {world} processes ({dist_ctx.backend}); global batch {cfg.data.batch_size}"
        )  # type: ignore[union-attr]

    teacher = build_teacher(cfg, data, log, trust) if cfg.kd is not None else None
    teacher_info: dict[str, Any] = {}
    teacher_test_preds: list[torch.Tensor] = []
    if teacher is not None:
        teacher.live.to(device)
        # Checked before anything is spent on it (a cache build, an epoch).
        teacher_info, teacher_test_preds = check_teacher(
            cfg, teacher, eval_loaders["test"], data, log
        )
    cache = prepare_teacher_cache(
        cfg, data, teacher, device, progress=progress, log=log, dist_ctx=dist_ctx
    )
    if cache is not None:
        teacher_info["teacher_cache"] = str(cache.path)
    joint = teacher is not None and teacher.joint

    objective = build_objective(cfg, student, teacher, cache)
    objective.to(device)
    train_loader = build_train_loader(
        cfg,
        data,
        device,
        view_sampler=cache.view_sampler() if cache is not None else None,
        rank=rank,
        world_size=world,
    )
    if teacher is not None and not joint:
        teacher_info.update(gradient_balance(cfg, objective, train_loader, log))
    steps_per_epoch = -(-len(train_loader) // cfg.train.grad_accumulation)
    lr_factor = build_lr_factor(
        cfg.schedule, steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs
    )

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    recorder = RunRecorder(run_dir, tensorboard=cfg.train.tensorboard, enabled=main)

    def current_spec(trainer: Trainer) -> ModelSpec:
        """The spec of the student as it is now: compression may have changed its structure."""
        extra = dict(spec.extra)
        for cb in trainer.callbacks:
            extra.update(cb.model_extra())
        return replace(spec, extra=extra)

    def save(trainer: Trainer, epoch: int, is_best: bool) -> None:
        if not main:  # one writer; every process holds the same weights
            return
        model_spec_now = current_spec(trainer)
        files = {"model": (trainer.student.state_dict(), model_spec_now)}
        if joint:
            files["teacher"] = (joint_teacher_network(teacher).state_dict(), teacher.loaded[0][1])
        state = {
            "train_state": trainer.state.to_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "rng": rng_state(),
            "callbacks": callback_states(trainer.callbacks),
            "config_hash": config_hash(cfg),
        }
        save_checkpoint(run_dir, epoch, files, state, keep=cfg.train.keep_checkpoints)
        if is_best:
            save_model_file(
                run_dir / "best.safetensors", trainer.student.state_dict(), model_spec_now
            )

    whole_test = build_eval_loaders(cfg, data, device)["test"]

    def evaluate_predictor(predict: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        # used by the one process that converts: the whole test split, no collectives
        return evaluate_model(predict, whole_test, data.num_classes, across_processes=False)

    compression = build_compression_callbacks(
        cfg.policies,
        epochs=cfg.train.epochs,
        input_shape=data.input_shape,
        out_dir=run_dir,
        evaluate=evaluate_predictor,
        onnx_metadata=lambda: {"kdistill": current_spec(trainer).to_json()},
        log=log,
        writes_files=main,
    )
    trainer = Trainer(
        objective,
        build_optimizer(cfg, list(objective.parameters())),
        train_loader,
        epochs=cfg.train.epochs,
        lr_factor=lr_factor,
        eval_loaders=eval_loaders,
        num_classes=data.num_classes,
        device=device,
        precision=cfg.train.precision,
        grad_clip=cfg.optim.grad_clip,
        grad_accumulation=cfg.train.grad_accumulation,
        callbacks=[*compression, *load_callbacks(cfg.train.callbacks), *callbacks],
        on_collapse=cfg.train.on_collapse,
        save_checkpoint=save,
        log_epoch=recorder.log_epoch,
        progress=progress,
        log=log,
        teacher_predictor=teacher_predictor(teacher) if teacher is not None else None,
        teacher_is_frozen=not joint,
        optimizer_factory=lambda params: build_optimizer(cfg, params),
        data_parallel=world > 1,
        sync_batchnorm=cfg.train.sync_batchnorm,
    )
    if teacher_test_preds:
        trainer.set_teacher_predictions("test", teacher_test_preds)
    if resume:
        _restore(trainer, run_dir, cfg, joint_teacher_network(teacher) if joint else None, log)
    recorder.start(trainer.state.epoch, trainer.state.step)
    fit_started = time.perf_counter()
    try:
        state = trainer.fit()
    finally:
        recorder.close()
    if not main:
        barrier()  # until the first process has written the results
        return RunResult(run_dir, {})

    final_spec = current_spec(trainer)
    size = save_model_file(run_dir / "model.safetensors", trainer.student.state_dict(), final_spec)
    if joint:
        save_model_file(
            run_dir / "teacher.safetensors",
            joint_teacher_network(teacher).state_dict(),
            teacher.loaded[0][1],
        )
    summary = _summary(
        cfg,
        run_dir,
        state,
        final_spec,
        trainer,
        data,
        size,
        teacher_info,
        fit_started - started + state.wall_time_s,
    )
    recorder.write_json("summary.json", summary)
    link_latest(cfg, run_dir)
    if dist_ctx is not None:
        barrier()
    return RunResult(run_dir, summary)


def _restore(
    trainer: Trainer, run_dir: Path, cfg: RunConfig, joint_teacher: nn.Module | None, log: Log
) -> None:
    """Continue from the newest checkpoint: compression state first (it may change the
    student's structure), then weights, optimizer, training state and RNG states."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunDirError(
            f"--resume: {run_dir} has no checkpoint to resume from; start it without --resume"
        )
    state = load_training_state(ckpt)
    if state.get("config_hash") != config_hash(cfg):
        raise RunDirError(f"--resume: the checkpoint in {ckpt} was made with a different config")
    load_callback_states(trainer.callbacks, state["callbacks"])
    for cb in trainer.callbacks:
        cb.on_restore(trainer)
    load_weights(trainer.student, ckpt / "model.safetensors")
    if joint_teacher is not None:
        load_weights(joint_teacher, ckpt / "teacher.safetensors")
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.state = TrainState.from_dict(state["train_state"])
    set_rng_state(state["rng"])
    log(f"resuming {run_dir} after epoch {trainer.state.epoch} ({ckpt.name})")


# Above this ratio of the distillation loss's gradient to a plain cross-entropy gradient
# (w.r.t. the logits, first batch), a student trained with a learning rate tuned for
# cross-entropy is at risk. Measured: 3.6x collapsed a LeNet-5 or left it 4.5 points below
# scratch (shared/research/peer-findings.md); 2.6-2.9x killed 2x30 MLP students on
# Fashion-MNIST at lr 0.05 in their first epoch, while up to 2.0x trained (docs/results.md).
GRADIENT_RATIO_WARNING = 2.5


def gradient_balance(cfg: RunConfig, objective: nn.Module, loader: Any, log: Log) -> dict[str, Any]:
    """How hard the distillation loss pulls on the student compared with plain cross-entropy,
    on the first batch (a learning rate tuned without a teacher assumes the latter).

    The student runs in eval mode without gradients (nothing in it changes and no random number
    is drawn), then the loss is differentiated with respect to its logits only.
    """
    kd = cfg.kd
    assert kd is not None
    loader.set_epoch(0)
    batch = next(iter(loader))
    student = objective.student
    was_training = student.training
    student.eval()
    with torch.no_grad():
        logits = logits_of(student(batch.inputs)).detach().float()
    student.train(was_training)
    logits.requires_grad_(True)
    teacher_out = objective.teacher(batch.inputs, sample_ids=batch.sample_ids, views=batch.views)
    loss = objective.loss_fn(logits, teacher_out, batch.targets)
    norms = gradient_norms({"total": loss.total, "labels": loss.parts["student"]}, logits)
    if norms["labels"] <= 0.0:
        return {}
    ratio = norms["total"] / norms["labels"]
    log(
        f"the distillation loss's gradient is {ratio:.1f}x a plain cross-entropy gradient (first batch)"
    )
    result: dict[str, Any] = {"kd_gradient_ratio": ratio}
    if ratio > GRADIENT_RATIO_WARNING and cfg.optim.grad_clip is None:
        warning = (
            f"with kd.alpha={kd.alpha}, beta={kd.resolved_beta}, T={kd.temperature} the steps are "
            f"about {ratio:.1f}x those optim.lr={cfg.optim.lr} takes without a teacher; if the "
            "student trains worse than from scratch or collapses, set optim.grad_clip (2.0 "
            "worked for LeNet-5 and MLPs on Fashion-MNIST), lower optim.lr, or lower kd.beta / "
            "kd.temperature"
        )
        log(f"WARNING: {warning}")
        result["warnings"] = [warning]  # kept in summary.json, shown by sweeps
    return result


def load_callbacks(paths: Sequence[str]) -> list[Callback]:
    """Instances of the ``package.module:Name`` callbacks of ``train.callbacks``."""
    import importlib

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


def _callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(callbacks)]


def callback_states(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """The state of every callback that has one, keyed by position and class."""
    states = {key: cb.state_dict() for key, cb in zip(_callback_keys(callbacks), callbacks)}
    return {key: value for key, value in states.items() if value}


def load_callback_states(callbacks: Sequence[Callback], states: dict[str, Any]) -> None:
    keys = _callback_keys(callbacks)
    unknown = sorted(set(states) - set(keys))
    if unknown:
        raise RunDirError(
            f"--resume: the checkpoint holds state of {', '.join(unknown)}, which this run does not have"
        )
    for key, cb in zip(keys, callbacks):
        if key in states:
            cb.load_state_dict(states[key])


def _summary(
    cfg: RunConfig,
    run_dir: Path,
    state: TrainState,
    spec: ModelSpec,
    trainer: Trainer,
    data: DataBundle,
    size_bytes: int,
    teacher_info: dict[str, Any],
    total_time: float,
) -> dict[str, Any]:
    from kdistill.engine.recorder import read_metrics

    history = read_metrics(run_dir)
    # Sizes and compute of the architecture itself (an exported QAT graph runs no hooks).
    structure = spec.build(quantized=False)
    last = history[-1]
    tests = [h["test"]["top1"] for h in history]
    summary: dict[str, Any] = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "config_hash": config_hash(cfg),
        "seed": cfg.train.seed,
        "mode": "distill" if cfg.kd is not None else "supervised",
        "arch": spec.arch,
        "dataset": data.name,
        "epochs": cfg.train.epochs,
        "test_samples": len(data.test),
        "test_top1": last["test"]["top1"],
        "test_top5": last["test"]["top5"],
        "test_loss": last["test"]["loss"],
        "test_ece": last["test"]["ece"],
        "best_test_top1": max(tests),
        "best_epoch": state.best_epoch,
        "params": count_params(structure),
        "macs": count_macs(structure, data.input_shape),
        "size_bytes": size_bytes,
        "epoch_times_s": state.epoch_times,
        "total_time_s": total_time,
        "git_sha": git_sha(),
        "kdistill_version": __version__,
        "torch_version": torch.__version__,
    }
    if cfg.train.measure_latency:
        summary["cpu_latency_ms"] = {
            f"batch_{b}": cpu_latency_ms(trainer.student, data.input_shape, b)
            for b in LATENCY_BATCHES
        }
    compression: dict[str, Any] = {}
    for cb in trainer.callbacks:
        compression.update(cb.summary_extra(trainer))
    if compression:
        compression["description"] = ", ".join(
            p.kind for p in cfg.policies if p.kind != "distillation"
        )
        compression["size_gzip_bytes"] = len(
            gzip.compress((run_dir / "model.safetensors").read_bytes(), 9)
        )
        summary["compression"] = compression
    if "agreement" in last["test"]:
        summary["test_agreement"] = last["test"]["agreement"]
    if "val" in last:
        summary["val_top1"] = last["val"]["top1"]
        summary["test_top1_at_best_val"] = history[state.best_epoch]["test"]["top1"]
    summary.update(teacher_info)
    return summary


def git_sha() -> str | None:
    """The commit of the kdistill source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
