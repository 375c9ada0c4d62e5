"""From a ``RunConfig`` to a finished run: build data, models, teacher and objective, train, record.

This is the glue between the typed config and the components; each step is a small function so
that the CLI, sweeps and tests can reuse them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill._version import __version__
from kdistill.cache import TeacherCache
from kdistill.compression.callbacks import build_callbacks as build_compression_callbacks
from kdistill.config.loader import config_hash, dump_yaml
from kdistill.config.schema import DataConfig, KDConfig, ModelConfig, RunConfig
from kdistill.data import BatchLoader, CropFlip, DataBundle, build_data
from kdistill.data.loader import ViewSampler
from kdistill.engine.checkpoint import (
    CheckpointError,
    ModelSpec,
    latest_checkpoint,
    load_model,
    load_training_state,
    load_weights,
    resolve_model_path,
    save_checkpoint,
    save_model_file,
)
from kdistill.engine.distributed import DistContext, barrier, init_from_env, shutdown
from kdistill.engine.metrics import ClassificationMeter
from kdistill.engine.profile import count_macs, count_params, cpu_latency_ms
from kdistill.engine.recorder import RunRecorder
from kdistill.engine.schedule import build_lr_factor
from kdistill.engine.trainer import (
    Callback,
    Trainer,
    TrainingError,
    TrainState,
    rng_state,
    set_rng_state,
)
from kdistill.losses import DistillationLoss
from kdistill.models import build_model
from kdistill.objectives import Distiller, Supervised
from kdistill.teacher_cache import prepare_teacher_cache
from kdistill.teachers import EnsembleTeacher, FrozenTeacher, Renormalize, logits_of
from kdistill.teachers.cached import CachedTeacher

Log = Callable[[str], None]
LATENCY_BATCHES = (1, 128)
TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class RunDirError(ValueError):
    """The run directory is in a state that the requested action cannot use."""


class TeacherCheckError(TrainingError):
    """The teacher is too weak to teach (untrained, wrong checkpoint, wrong data)."""


# ----------------------------------------------------------------------------- environment


def resolve_device(name: str, dist_ctx: DistContext | None = None) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error. In a
    data-parallel run on GPUs each process takes the GPU of its local rank."""
    if dist_ctx is not None and dist_ctx.backend == "nccl":
        return torch.device("cuda", dist_ctx.local_rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA GPU is available; use cpu or auto")
    return device


def configure_torch(cfg: RunConfig, dist_ctx: DistContext | None = None) -> None:
    """Threads, determinism and the seed of initialization and dropout. Processes sharing a
    machine share its cores rather than each taking all of them."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    elif dist_ctx is not None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_ctx.local_world_size))
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.train.seed)


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


# ----------------------------------------------------------------------------- run directories


def run_identity(cfg: RunConfig) -> str:
    """A hash of what determines a run's result apart from its seed: the config values, and the
    contents of the weight files it names (teachers, initial weights). A config that names a
    teacher as ``runs/teacher`` therefore gets a new run directory when that teacher is
    retrained, instead of being mistaken for the finished run with the old teacher."""
    files = [t.checkpoint for t in cfg.kd.teachers] if cfg.kd is not None else []
    files.append(cfg.model.checkpoint)
    digests = [file_digest(resolve_model_path(f)) if f is not None else None for f in files]
    base = config_hash(cfg, exclude=("out_dir", "train.seed"))
    if all(d is None for d in digests):
        return base
    return hashlib.sha256(json.dumps([base, digests]).encode()).hexdigest()[:10]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def group_dir(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>-<identity>``: one directory per config, shared by its seeds."""
    return Path(cfg.out_dir) / f"{cfg.name}-{run_identity(cfg)}"


def run_dir_for(cfg: RunConfig) -> Path:
    """``<group dir>/seed-<seed>``: where one training run writes everything."""
    return group_dir(cfg) / f"seed-{cfg.train.seed}"


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Check the run directory against the requested action (new run, resume, start over)."""
    finished = (run_dir / "summary.json").is_file()
    started = run_dir.exists() and any(run_dir.iterdir())
    if force and started:
        shutil.rmtree(run_dir)
        return
    if resume:
        if finished:
            raise RunDirError(
                f"{run_dir} already holds a finished run (summary.json); nothing to resume"
            )
        return
    if finished:
        raise RunDirError(
            f"{run_dir} already holds a finished run with this config (see its summary.json); "
            "pass --force to train it again from scratch"
        )
    if started:
        ckpt = latest_checkpoint(run_dir) if (run_dir / "checkpoints").exists() else None
        where = f"its last checkpoint is {ckpt.name}" if ckpt else "it has no checkpoint yet"
        raise RunDirError(
            f"{run_dir} holds an unfinished run of this config ({where}); pass --resume to "
            "continue it or --force to start over"
        )


# ----------------------------------------------------------------------------- components


def model_spec(cfg_model: ModelConfig, data: DataBundle, data_cfg: DataConfig) -> ModelSpec:
    """What a model file records: architecture, classes, input normalization and the data
    settings that define its test split (so ``kdistill eval`` evaluates on the same one)."""
    split = {
        k: getattr(data_cfg, k)
        for k in ("name", "root", "split_seed", "val_fraction", "image_size")
    }
    return ModelSpec(
        arch=cfg_model.arch,  # type: ignore[arg-type]
        args=dict(cfg_model.args),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        mean=data.mean if data_cfg.normalize else None,
        std=data.std if data_cfg.normalize else None,
        dataset=data.name,
        class_names=data.class_names,
        extra={"data": split},
    )


def check_model_fits_data(spec: ModelSpec, data: DataBundle, what: str) -> None:
    if spec.num_classes != data.num_classes:
        raise ValueError(
            f"{what} predicts {spec.num_classes} classes but {data.name} has {data.num_classes}"
        )
    if tuple(spec.input_shape) != tuple(data.input_shape):
        raise ValueError(
            f"{what} takes inputs of shape {tuple(spec.input_shape)} but {data.name} samples are "
            f"{tuple(data.input_shape)}"
        )


def build_student(cfg: RunConfig, data: DataBundle) -> tuple[nn.Module, ModelSpec]:
    """The model being trained, freshly initialized or from ``model.checkpoint``."""
    m = cfg.model
    if m.checkpoint is not None:
        model, spec = load_model(m.checkpoint, arch=m.arch, args=m.args or None)
        check_model_fits_data(spec, data, f"model.checkpoint {m.checkpoint}")
        spec = model_spec(ModelConfig(arch=spec.arch, args=dict(spec.args)), data, cfg.data)
        return model, spec
    spec = model_spec(m, data, cfg.data)
    return build_model(spec.arch, data.num_classes, data.input_shape, spec.args), spec


def input_adapter(spec: ModelSpec, data: DataBundle, normalize: bool) -> nn.Module | None:
    """A :class:`Renormalize` from the pipeline's normalization to the one ``spec`` expects."""
    channels = data.input_shape[0]
    zeros, ones = (0.0,) * channels, (1.0,) * channels
    have = (data.mean, data.std) if normalize else (zeros, ones)
    want = (spec.mean or zeros, spec.std or ones)
    if all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        for x, y in zip(have, want)
        for a, b in zip(x, y)
    ):
        return None
    return Renormalize(have[0], have[1], want[0], want[1])


def load_teachers(
    kd: KDConfig, data: DataBundle, data_cfg: DataConfig, log: Log
) -> list[tuple[nn.Module, ModelSpec, str]]:
    """The teacher networks with their specs and checkpoint paths (weights loaded)."""
    teachers = []
    for i, t in enumerate(kd.teachers):
        what = f"kd.teachers[{i}]"
        if t.checkpoint is None:  # joint training from scratch (validated by KDConfig)
            spec = model_spec(t, data, data_cfg)
            model = build_model(spec.arch, data.num_classes, data.input_shape, spec.args)
        else:
            try:
                model, spec = load_model(t.checkpoint, arch=t.arch, args=t.args or None)
            except CheckpointError as e:
                raise CheckpointError(f"{what}: {e}") from None
            check_model_fits_data(spec, data, f"{what} ({t.checkpoint})")
            if spec.dataset is not None and spec.dataset != data.name:
                log(
                    f"note: {what} was trained on {spec.dataset}, the student trains on {data.name}"
                )
        teachers.append((model, spec, t.checkpoint or "(trained jointly)"))
    return teachers


@dataclass
class TeacherSetup:
    """The configured teacher(s), loaded.

    Attributes:
        loaded: each network with its model file's spec and checkpoint path.
        live: what runs the teacher: a ``FrozenTeacher``, an ``EnsembleTeacher``, or in joint
            training the trainable network (behind its input adapter, if any).
        members: the frozen members (one for a single teacher); empty in joint training.
    """

    loaded: list[tuple[nn.Module, ModelSpec, str]]
    live: nn.Module
    members: list[FrozenTeacher]

    @property
    def joint(self) -> bool:
        return not self.members


def build_teacher(cfg: RunConfig, data: DataBundle, log: Log) -> TeacherSetup:
    """Load ``kd.teachers`` and wrap them: frozen (and ensembled), or trainable in joint mode."""
    kd = cfg.kd
    assert kd is not None
    loaded = load_teachers(kd, data, cfg.data, log)
    if kd.teacher_weight > 0:
        model, spec, _ = loaded[0]
        adapter = input_adapter(spec, data, cfg.data.normalize)
        return TeacherSetup(loaded, model if adapter is None else nn.Sequential(adapter, model), [])
    members = [
        FrozenTeacher(
            model,
            input_transform=input_adapter(spec, data, cfg.data.normalize),
            bn_policy=kd.bn_policy,
            dtype=TEACHER_DTYPES[kd.teacher_precision],
            channels_last=kd.teacher_channels_last,
        )
        for model, spec, _ in loaded
    ]
    if len(members) == 1:
        return TeacherSetup(loaded, members[0], members)
    ensemble = EnsembleTeacher(
        members,
        weights=kd.ensemble_weights,
        reduce=kd.ensemble_reduce,
        temperature=kd.temperature if kd.ensemble_reduce == "probs" else None,
    )
    return TeacherSetup(loaded, ensemble, members)


def build_loss(kd: KDConfig) -> DistillationLoss:
    return DistillationLoss(
        kd.temperature,
        kd.alpha,
        kd.beta,
        scale_by_t2=kd.scale_by_t2,
        teacher_weight=kd.teacher_weight,
    )


def build_objective(
    cfg: RunConfig, student: nn.Module, teacher: TeacherSetup | None, cache: TeacherCache | None
) -> nn.Module:
    """``Supervised(student)`` without kd; else a ``Distiller`` reading the cache when there is
    one, running the live teacher otherwise."""
    if teacher is None:
        return Supervised(student)
    kd = cfg.kd
    assert kd is not None
    source = teacher.live
    if cache is not None:
        source = CachedTeacher(
            cache,
            reduce=kd.ensemble_reduce,
            weights=kd.ensemble_weights,
            temperature=kd.temperature,
        )
    window = next((p for p in cfg.policies if p.kind == "distillation"), None)
    start = window.starting_epoch if window is not None else kd.start_epoch
    end = window.ending_epoch if window is not None else None
    return Distiller(student, source, build_loss(kd), kd_start_epoch=start, kd_end_epoch=end)


def build_optimizer(cfg: RunConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    params = list(params)
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def build_augment(cfg: RunConfig) -> CropFlip | None:
    aug = cfg.data.augment
    return CropFlip(aug.crop_padding, aug.hflip) if aug.enabled else None


def _stats(cfg: RunConfig, data: DataBundle) -> dict[str, Any]:
    return {"mean": data.mean, "std": data.std} if cfg.data.normalize else {}


def build_train_loader(
    cfg: RunConfig,
    data: DataBundle,
    device: torch.device,
    *,
    view_sampler: ViewSampler | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """Shuffled, augmented training batches (views drawn by ``view_sampler`` when given)."""
    return BatchLoader(
        data.train,
        cfg.data.batch_size,
        device=device,
        shuffle=True,
        augment=build_augment(cfg),
        view_sampler=view_sampler,
        seed=cfg.train.seed,
        drop_last=cfg.data.drop_last or world_size > 1,
        rank=rank,
        world_size=world_size,
        **_stats(cfg, data),
    )


def build_eval_loaders(
    cfg: RunConfig, data: DataBundle, device: torch.device, *, rank: int = 0, world_size: int = 1
) -> dict[str, BatchLoader]:
    """``{"val": ..., "test": ...}`` (val only when there is a validation split); with several
    processes each evaluates its share and the metrics are summed."""
    batch = cfg.data.eval_batch_size
    batch += (-batch) % world_size  # a multiple of the number of processes
    shard = {"rank": rank, "world_size": world_size}
    evals = {}
    if data.val is not None:
        evals["val"] = BatchLoader(data.val, batch, device=device, **shard, **_stats(cfg, data))
    evals["test"] = BatchLoader(data.test, batch, device=device, **shard, **_stats(cfg, data))
    return evals


def evaluate_model(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: BatchLoader,
    num_classes: int,
    *,
    input_transform: nn.Module | None = None,
    across_processes: bool = True,
) -> dict[str, float]:
    """Top-1/top-5/loss/ECE of a network (or any ``inputs -> logits`` function, e.g. an
    onnxruntime session) on a split (the process's share of it, reduced over all processes when
    ``across_processes``)."""
    if isinstance(model, nn.Module):
        model.eval()
    meter = ClassificationMeter(num_classes)
    with torch.inference_mode():
        for batch in loader:
            x = batch.inputs if input_transform is None else input_transform(batch.inputs)
            logits = logits_of(model(x)).float()
            meter.update(
                logits,
                batch.targets,
                float(nn.functional.cross_entropy(logits, batch.targets, reduction="sum")),
            )
    return meter.result(across_processes=across_processes)


# ----------------------------------------------------------------------------- the run


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
) -> RunResult:
    """Train one run of ``cfg`` (one seed) and write its directory. See ``docs/cli.md``.

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
        )
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
    student, spec = build_student(cfg, data)
    eval_loaders = build_eval_loaders(cfg, data, device, rank=rank, world_size=world)
    if world > 1:
        log(
            f"data-parallel training on {world} processes ({dist_ctx.backend}); global batch {cfg.data.batch_size}"
        )  # type: ignore[union-attr]

    teacher = build_teacher(cfg, data, log) if cfg.kd is not None else None
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
            files["teacher"] = (_joint_teacher_net(teacher).state_dict(), teacher.loaded[0][1])
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
        teacher_predictor=_teacher_predictor(teacher) if teacher is not None else None,
        teacher_is_frozen=not joint,
        optimizer_factory=lambda params: build_optimizer(cfg, params),
        data_parallel=world > 1,
        sync_batchnorm=cfg.train.sync_batchnorm,
    )
    if teacher_test_preds:
        trainer.set_teacher_predictions("test", teacher_test_preds)
    if resume:
        _restore(trainer, run_dir, cfg, _joint_teacher_net(teacher) if joint else None, log)
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
            _joint_teacher_net(teacher).state_dict(),
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


def latest_link(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>``: a symlink to the newest finished run of that name."""
    return Path(cfg.out_dir) / cfg.name


def link_latest(cfg: RunConfig, run_dir: Path) -> None:
    """Point ``<out_dir>/<name>`` at ``run_dir`` (atomically), so configs can name a teacher
    as ``runs/<name>`` without knowing the config hash."""
    link = latest_link(cfg)
    if link.exists() and not link.is_symlink():
        return  # a real file or directory of the user's: leave it alone
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir, link.parent))
    os.replace(tmp, link)


def _joint_teacher_net(teacher: TeacherSetup) -> nn.Module:
    """The trainable network of joint training (without its input adapter)."""
    live = teacher.live
    return live[1] if isinstance(live, nn.Sequential) else live


def _teacher_predictor(teacher: TeacherSetup) -> Callable[[torch.Tensor], torch.Tensor]:
    """``inputs -> predictions`` of the live teacher, for agreement on the eval splits."""

    def predict(inputs: torch.Tensor) -> torch.Tensor:
        if teacher.joint:
            was = teacher.live.training
            teacher.live.eval()
            pred = logits_of(teacher.live(inputs)).argmax(dim=1)
            teacher.live.train(was)
            return pred
        return teacher.live(inputs).predictions()

    return predict


def check_teacher(
    cfg: RunConfig,
    teacher: TeacherSetup,
    test_loader: BatchLoader,
    data: DataBundle,
    log: Log,
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Evaluate the teacher(s) on the test split and refuse one that cannot teach.

    Returns the record for the summary and the (frozen) teacher's test predictions per batch,
    which the trainer reuses for student-teacher agreement.
    """
    kd = cfg.kd
    assert kd is not None
    teachers = teacher.loaded
    if teacher.joint:
        return {"teacher_checkpoints": [t[2] for t in teachers]}, []
    meter = ClassificationMeter(data.num_classes)
    predictions = []
    with torch.inference_mode():
        for batch in test_loader:
            out = teacher.live(batch.inputs)
            meter.update(out.scores.float(), batch.targets, 0.0)
            predictions.append(out.predictions())
    top1 = meter.result()["top1"]
    members = []
    for i, (model, spec, path) in enumerate(teachers):
        if len(teachers) > 1:  # an ensemble: each member's own accuracy too
            adapter = input_adapter(spec, data, cfg.data.normalize)
            member_top1 = evaluate_model(
                model, test_loader, data.num_classes, input_transform=adapter
            )["top1"]
        else:
            member_top1 = top1
        members.append({"checkpoint": path, "arch": spec.arch, "test_top1": member_top1})
        log(f"teacher {i}: {spec.arch} from {path}: test top-1 {member_top1:.2%}")
    info: dict[str, Any] = {"teacher_checkpoints": [t[2] for t in teachers], "teachers": members}
    info["teacher_test_top1"] = top1
    minimum = kd.min_teacher_top1 if kd.min_teacher_top1 is not None else 2.0 / data.num_classes
    if top1 < minimum:
        raise TeacherCheckError(
            f"the teacher reaches only {top1:.2%} test top-1 on {data.name} (chance is "
            f"{1 / data.num_classes:.1%}; required: {minimum:.1%}, kd.min_teacher_top1). It cannot "
            "teach: check kd.teachers[].checkpoint points at a trained model for this dataset."
        )
    return info, predictions


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
