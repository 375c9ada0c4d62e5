"""``build_run``: from a ``RunConfig`` to the parts of a run, in one place.

Training (:func:`kdistill.experiment.run`), ``kdistill cache build``, sweeps and the benchmarks
all assemble a run here: data, student, teacher(s) (checked before anything is spent on them),
the teacher-output cache, the objective, loaders, the optimizer, the schedule and the
compression policies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.cache import TeacherCache
from kdistill.compression.callbacks import build_callbacks, structure_record
from kdistill.config.schema import KDConfig, MethodConfig, ModelConfig, OptimConfig, RunConfig
from kdistill.data import (
    BatchLoader,
    DataBundle,
    build_augment,
    build_data,
    first_input,
    loader_for,
)
from kdistill.engine.distributed import DistContext
from kdistill.engine.trainer import Callback, Loop
from kdistill.experiment.health import gradient_check, scratch_baselines, teacher_versus_scratch
from kdistill.experiment.lm import assemble_lm, check_cross_teacher, prepare_token_cache
from kdistill.experiment.loading import check_model_fits_data, load_model
from kdistill.experiment.loop import build_loop
from kdistill.experiment.options import RunOptions
from kdistill.experiment.teacher_cache import (
    CachePlan,
    plan_teacher_cache,
    prepare_teacher_cache,
    reads_teacher_cache,
)
from kdistill.experiment.teacher_memo import CheckMemo, check_memo, recall_check, remember_check
from kdistill.experiment.teachers import (
    TeacherCheck,
    TeacherSetup,
    accept_teacher,
    build_teacher,
    check_teacher,
    model_spec,
)
from kdistill.hardware import ThreadChoice, choose_threads
from kdistill.methods import method_info
from kdistill.models import ModelSpec, build_model, count_params
from kdistill.models.foreign import (
    is_plain_state_dict,
    load_plain_weights,
    read_state_dict,
    recorded_arch,
)
from kdistill.objectives import Objective, Supervised
from kdistill.objectives.method_distiller import MethodDistiller, probe_layers
from kdistill.objectives.terms import TeacherLabelsTerm, Term, build_term
from kdistill.teachers.cached import CachedTeacher
from kdistill.trust import CodeTrust

Log = Callable[[str], None]


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


def configure_torch(
    cfg: RunConfig,
    dist_ctx: DistContext | None = None,
    threads: int | ThreadChoice | None = None,
) -> ThreadChoice:
    """Threads, determinism and the seed of initialization and dropout. ``threads`` (the
    ``--threads`` flag, or a sweep's choice for its workers) wins over ``train.threads``;
    without either, :func:`~kdistill.hardware.choose_threads` avoids oversubscribing the
    machine: processes sharing it share its cores, and cores busy with other work are left
    to it. Returns the choice, with its reason."""
    if isinstance(threads, ThreadChoice):
        choice = threads
    else:
        requested = threads if threads is not None else cfg.train.threads
        share = dist_ctx.local_world_size if dist_ctx is not None else 1
        choice = choose_threads(requested, share=share)
    torch.set_num_threads(choice.threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.train.seed)
    return choice


def code_trust(cfg: RunConfig, trust_code: bool = False) -> CodeTrust:
    """What model files may name in a run of ``cfg``: the import paths the config itself
    writes, or anything with ``trust_code`` (``--trust-code``)."""
    return CodeTrust.of(cfg.user_code(), trust_code=trust_code)


def build_student(
    cfg: RunConfig, data: DataBundle, trust: CodeTrust, checkpoint: Path | None = None
) -> tuple[nn.Module, ModelSpec]:
    """The model being trained and its spec: freshly initialized, from ``model.checkpoint``,
    or (resuming) from the checkpoint's model file, with the structure compression gave it."""
    m = cfg.model
    source = checkpoint if checkpoint is not None else m.checkpoint
    if source is None:
        spec = model_spec(m, data, cfg.data)
        return build_model(spec.arch, data.num_classes, data.input_shape, spec.args), spec
    if checkpoint is None and is_plain_state_dict(source):  # weights trained elsewhere
        arch = m.arch or recorded_arch(source, "model.checkpoint")
        if arch is None:
            raise ValueError(
                f"model.checkpoint {source} holds weights without an architecture (a plain "
                "PyTorch state dict or a .safetensors file not written by kdistill): name it "
                "with model.arch"
            )
        spec = model_spec(replace(m, arch=arch), data, cfg.data)
        model = build_model(spec.arch, data.num_classes, data.input_shape, spec.args)
        load_plain_weights(model, read_state_dict(source), f"model.checkpoint {source}")
        return model.train(), spec
    loaded = load_model(source, arch=m.arch, args=m.args or None, trust=trust)
    what = "the checkpoint" if checkpoint is not None else f"model.checkpoint {source}"
    check_model_fits_data(loaded.spec, data, what)
    spec = model_spec(
        ModelConfig(arch=loaded.spec.arch, args=dict(loaded.spec.args)), data, cfg.data
    )
    loaded.model.train()
    return loaded.model, spec


def build_objective(
    cfg: RunConfig,
    student: nn.Module,
    teacher: TeacherSetup | None,
    data: DataBundle | None = None,
    device: torch.device | None = None,
) -> Objective:
    """``Supervised(student)`` without kd, else the method objective with the terms of
    ``kd.methods`` (Hinton's alone by default, plus the teacher's own labels in joint
    training). It reads the live teacher; :func:`preflight` points it at the teacher-output
    cache when the run has one."""
    if teacher is None:
        return Supervised(student)
    kd = cfg.kd
    assert kd is not None
    source = teacher.live
    if data is None:
        raise ValueError(
            "a distillation objective needs the data (layers are probed on one sample)"
        )
    window = cfg.kd_window
    terms = build_terms(kd, student, teacher, data, device or torch.device("cpu"))
    return MethodDistiller(
        student, source, terms, label_weight=kd.alpha,
        kd_start_epoch=window.start, kd_end_epoch=window.end,
    )  # fmt: skip


def build_terms(
    kd: KDConfig, student: nn.Module, teacher: TeacherSetup, data: DataBundle, device: torch.device
) -> list[Term]:
    """The terms of ``kd.methods`` (Hinton's term alone when it lists none), with adapters and
    heads sized from the layers' outputs for one training sample, and the teacher's own label
    term in joint training (``kd.teacher_weight``)."""
    methods = kd.methods or (MethodConfig("kd"),)
    pairs = {
        m.name: [(p.student, p.teacher) for p in (m.pairs or kd.features)]
        if method_info(m.name).needs_features
        else []
        for m in methods
    }
    sample = first_input(data.train).to(device)
    student.to(device)
    student_shapes, teacher_shapes = probe_layers(
        student,
        teacher.live,
        [s for p in pairs.values() for s, _ in p],
        [t for p in pairs.values() for _, t in p],
        sample,
    )
    terms = [
        build_term(
            m.name,
            m.weight if m.weight is not None else _default_weight(kd, m.name),
            m.settings,
            pairs[m.name],
            kd_temperature=kd.temperature,
            scale_by_t2=kd.scale_by_t2,
            standardize=kd.standardize,
            student_shapes=student_shapes,
            teacher_shapes=teacher_shapes,
            train_ids=data.train.ids,
            train_labels=data.train.labels,
        )
        for m in methods
    ]
    if kd.teacher_weight > 0:  # joint training: the teacher learns its labels too
        terms.append(TeacherLabelsTerm(kd.teacher_weight))
    return terms


def _default_weight(kd: KDConfig, name: str) -> float:
    weight = method_info(name).weight
    return kd.resolved_beta if weight is None else weight


def build_optimizer(cfg: OptimConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _stats(cfg: RunConfig, data: DataBundle) -> dict[str, Any]:
    """What every loader of the run shares: the statistics to standardize with and, for
    streamed data, the DataLoader workers."""
    shared: dict[str, Any] = {"mean": data.mean, "std": data.std} if cfg.data.normalize else {}
    if data.pipeline == "stream":
        shared["workers"] = cfg.data.workers  # null: loader_for chooses
    return shared


def build_train_loader(
    cfg: RunConfig,
    data: DataBundle,
    device: torch.device,
    *,
    cache: TeacherCache | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """Shuffled, augmented training batches (only views the cache stores, when there is one,
    and for streamed crops of the files exactly the crops it recorded)."""
    replay = {"replay": cache.crop_boxes} if cache is not None and cache.layout.crops else {}
    return loader_for(
        data.train,
        cfg.data.batch_size,
        device=device,
        shuffle=True,
        augment=build_augment(cfg.data.augment),
        view_sampler=cache.view_sampler() if cache is not None else None,
        **replay,
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
        evals["val"] = loader_for(data.val, batch, device=device, **shard, **_stats(cfg, data))
    evals["test"] = loader_for(data.test, batch, device=device, **shard, **_stats(cfg, data))
    return evals


@dataclass(frozen=True, kw_only=True)
class RunParts:
    """Everything a run is made of (see :func:`build_run`): made by :func:`assemble`, completed
    by :func:`preflight` (the teacher's check, the cache, the health findings); frozen, so a
    step that changes a part returns new parts (``dataclasses.replace``).

    Attributes:
        cfg: the config.
        device: where the student trains.
        data: the splits.
        spec: the student's spec before compression (what its model files record, plus the
            structure compression gives it: :meth:`student_spec`).
        objective: what the trainer trains.
        teacher: the teacher(s), or ``None``.
        teacher_check: the frozen teacher's test accuracy and predictions, or ``None``.
        cache: the teacher-output cache the run reads, or ``None``.
        train_loader, eval_loaders: the batches.
        loop: how the training loop runs.
        compression: the compression policies' callbacks, in the order they act.
        kd_gradient_ratio: the first batch's gradient ratio (distillation only).
        warnings: what the health checks found (kept in the run record).
        threads: the CPU threads this process uses, and why.
        alignment: a cross-tokenizer run's alignment of the two tokenizations
            (:func:`~kdistill.experiment.lm.alignment_stats`), or ``None``.
    """

    cfg: RunConfig
    device: torch.device
    data: DataBundle
    spec: ModelSpec
    objective: Objective
    teacher: TeacherSetup | None
    teacher_check: TeacherCheck | None
    cache: TeacherCache | None
    train_loader: BatchLoader
    eval_loaders: dict[str, BatchLoader]
    loop: Loop
    compression: list[Callback]
    kd_gradient_ratio: float | None = None
    warnings: tuple[str, ...] = ()
    threads: ThreadChoice | None = None
    alignment: dict[str, float] | None = None

    def optimizer_factory(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg.optim, params)

    def student_spec(self, student: nn.Module) -> ModelSpec:
        """The spec of the student as it is now: compression may have changed its structure."""
        del student  # the structure is what the compression callbacks did to it
        structure = structure_record(self.compression)
        # a pruned Hugging Face student is its new config: its architecture's own argument
        config = structure.pop("hf_config", None)
        args = self.spec.args if config is None else {**self.spec.args, "config": config}
        return replace(self.spec, args=args, extra={**self.spec.extra, **structure})


def build_run(
    cfg: RunConfig,
    options: RunOptions | None = None,
    *,
    dist_ctx: DistContext | None = None,
    resume_from: Path | None = None,
    wait_for_cache_builder: bool = True,
    rebuild_cache: bool = False,
    teacher_precision: str | None = None,
    **settings: Any,
) -> RunParts:
    """Assemble the parts of a run of ``cfg``, in three steps that read as a recipe: this
    process's threads and seed (:func:`configure_torch`), the parts (:func:`assemble`: nothing
    is evaluated or written), and the checks and preparations before training
    (:func:`preflight`: the teacher's check, its output cache, the gradient check).

    Args:
        cfg: the config.
        options: trust_code, log, progress, threads (:class:`RunOptions`); ``settings`` may
            give them as keywords instead.
        dist_ctx: this process's place in a data-parallel run, or ``None``.
        resume_from: a checkpoint's model file: the student is rebuilt from it (with the
            structure compression had given it) instead of from the config, and the health
            checks are not made again.
        wait_for_cache_builder: wait for another process building the same teacher cache
            (runs) instead of failing (``kdistill cache build``).
        rebuild_cache: compute the teacher's outputs again even if the cache exists.
        teacher_precision: the teacher precision a resumed run began with (its checkpoint
            records it), kept rather than chosen again for ``kd.teacher_precision: auto``.

    Raises:
        TeacherCheckError: the teacher cannot teach; nothing was spent on it.
    """
    options = RunOptions.of(options, **settings)
    machine = configure_torch(cfg, dist_ctx, options.threads)
    options.log(machine.describe())
    parts = assemble(
        cfg,
        trust_code=options.trust_code,
        log=options.log,
        dist_ctx=dist_ctx,
        resume_from=resume_from,
        teacher_precision=teacher_precision,
    )
    return preflight(
        replace(parts, threads=machine),
        log=options.log,
        progress=options.progress,
        dist_ctx=dist_ctx,
        resumed=resume_from is not None,
        wait_for_cache_builder=wait_for_cache_builder,
        rebuild_cache=rebuild_cache,
    )


def assemble(
    cfg: RunConfig,
    *,
    trust_code: bool = False,
    log: Log = print,
    dist_ctx: DistContext | None = None,
    resume_from: Path | None = None,
    teacher_precision: str | None = None,
) -> RunParts:
    """The parts of a run of ``cfg``, built from its files: data, student, teacher(s) loaded,
    the objective (reading the live teacher), loaders, the loop and the compression callbacks.
    Nothing is evaluated, written or cached, and no process-wide setting changes (those are
    :func:`configure_torch`'s and :func:`preflight`'s)."""
    device = resolve_device(cfg.train.device, dist_ctx)
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else (0, 1)
    trust = code_trust(cfg, trust_code)
    if cfg.data.is_text:  # a language model: its own data, models and objective
        lm = assemble_lm(
            cfg, trust=trust, log=log, device=device, dist_ctx=dist_ctx,
            resume_from=resume_from, teacher_precision=teacher_precision,
        )  # fmt: skip
        return RunParts(cfg=cfg, device=device, teacher_check=None, cache=None, **lm)
    data = build_data(cfg.data)
    log(data.describe_pipeline())
    student, spec = build_student(cfg, data, trust, resume_from)
    for note in getattr(student, "kdistill_adapted", ()):
        log(f"student {spec.arch}: {note}")
    eval_loaders = build_eval_loaders(cfg, data, device, rank=rank, world_size=world)
    teacher = None
    if cfg.kd is not None:
        teacher = build_teacher(
            cfg,
            data,
            log,
            trust,
            device=device,
            recorded_precision=teacher_precision,
            defer_probe=reads_teacher_cache(cfg),  # the cache may know the precision
        )
        teacher.live.to(device)
    objective = build_objective(cfg, student, teacher, data, device)
    objective.to(device)
    train_loader = build_train_loader(cfg, data, device, rank=rank, world_size=world)
    loop = build_loop(cfg, device, data.num_classes, len(train_loader), world)
    compression = build_callbacks(
        cfg.policies, epochs=cfg.train.epochs, input_shape=data.input_shape, log=log
    )
    if world > 1 and dist_ctx is not None:
        log(
            f"data-parallel training on {world} processes ({dist_ctx.backend}); "
            f"global batch {cfg.data.batch_size}"
        )
    return RunParts(
        cfg=cfg, device=device, data=data, spec=spec, objective=objective, teacher=teacher,
        teacher_check=None, cache=None, train_loader=train_loader, eval_loaders=eval_loaders,
        loop=loop, compression=compression,
    )  # fmt: skip


def preflight(
    parts: RunParts,
    *,
    log: Log = print,
    progress: bool = True,
    dist_ctx: DistContext | None = None,
    resumed: bool = False,
    wait_for_cache_builder: bool = True,
    rebuild_cache: bool = False,
) -> RunParts:
    """What is done once before training: the frozen teacher's check on the test split, the
    teacher-output cache (built, or found; the objective and the training batches then read
    it), the gradient check of the loss and the comparison with scratch baselines (not again
    when a run resumes: its first session's findings are restored from the checkpoint)."""
    cfg, data = parts.cfg, parts.data
    if parts.teacher is not None:
        parts = _prepare_teacher(
            parts, log, progress, dist_ctx, wait_for_cache_builder, rebuild_cache
        )
    if resumed:
        return parts
    # Before training only: on a resume the first run's result is kept (the check's eval-mode
    # forward would also change a fake-quantized student, breaking an exact resume).
    ratio, warnings = gradient_check(cfg, parts.objective, parts.train_loader, log)
    if parts.teacher_check is not None:
        baselines = scratch_baselines(
            cfg, data.name, parts.spec.arch, count_params(parts.objective.student), len(data.test)
        )
        warnings += teacher_versus_scratch(
            parts.teacher_check.test_top1, baselines, len(data.test), log
        )
    return replace(parts, kd_gradient_ratio=ratio, warnings=tuple(warnings))


def _prepare_teacher(
    parts: RunParts,
    log: Log,
    progress: bool,
    dist_ctx: DistContext | None,
    wait_for_cache_builder: bool,
    rebuild_cache: bool,
) -> RunParts:
    """The frozen teacher's check, then its output cache, which the objective and the training
    batches read from then on. The cache is planned first: ``auto``'s teacher precision follows
    a finished cache, and a run reading one recalls the teacher's check from it instead of
    evaluating the teacher again (:mod:`kdistill.experiment.teacher_memo`); a cache is built
    only after the teacher passed its check."""
    cfg, data, device, teacher = parts.cfg, parts.data, parts.device, parts.teacher
    assert cfg.kd is not None and teacher is not None
    if cfg.data.is_text:
        return _prepare_lm_teacher(parts, log, progress, rebuild_cache)
    plan = plan_teacher_cache(cfg, data, teacher, log=log, force_build=rebuild_cache)
    teacher.settle_precision(log)  # no cache to follow: auto's probe decides
    check, memo = _teacher_check(parts, plan, dist_ctx, log)
    cache = prepare_teacher_cache(
        cfg,
        data,
        teacher,
        device,
        progress=progress,
        log=log,
        dist_ctx=dist_ctx,
        wait_for_builder=wait_for_cache_builder,
        force_build=rebuild_cache,
        plan=plan,
    )
    if memo is not None and check is not None:
        problem = remember_check(memo, check)
        if problem is not None:
            log(f"the teacher's check is not kept for later runs: {problem}")
    parts = replace(parts, teacher_check=check, cache=cache)
    if cache is not None:
        rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else (0, 1)
        parts.objective.read_teacher_from(  # type: ignore[attr-defined]
            CachedTeacher(
                cache,
                reduce=cfg.kd.ensemble_reduce,
                weights=cfg.kd.ensemble_weights,
                temperature=cfg.kd.temperature,
            )
        )
        parts = replace(
            parts,
            train_loader=build_train_loader(
                cfg, data, device, cache=cache, rank=rank, world_size=world
            ),
        )
    return parts


def _prepare_lm_teacher(parts: RunParts, log: Log, progress: bool, rebuild: bool) -> RunParts:
    """A teacher language model's check on the test split, then its token cache, when the
    config asks for one (the objective then reads the teacher's top-k tokens from it)."""
    cfg, teacher = parts.cfg, parts.teacher
    assert cfg.kd is not None and teacher is not None
    if cfg.kd.cross_tokenizer is not None:  # the teacher reads its own tokens
        check = check_cross_teacher(
            cfg.kd, teacher, parts.objective, parts.eval_loaders["test"], log
        )
    else:
        check = check_teacher(cfg.kd, teacher, parts.eval_loaders["test"], parts.data, log)
    if not cfg.kd.teacher_cache.enabled:
        return replace(parts, teacher_check=check)
    cache = prepare_token_cache(
        cfg,
        parts.data,
        teacher,
        log=log,
        progress=progress,
        force_build=rebuild,  # type: ignore[arg-type]
    )
    parts.objective.teacher = CachedTeacher(cache, temperature=cfg.kd.temperature)  # type: ignore[attr-defined]
    return replace(parts, teacher_check=check, cache=cache)


def _teacher_check(
    parts: RunParts, plan: CachePlan | None, dist_ctx: DistContext | None, log: Log
) -> tuple[TeacherCheck | None, CheckMemo | None]:
    """The teacher's check, recalled from a finished cache when it holds one of exactly this
    teacher on this test split, else measured now; and the memo to keep a measured check in
    (``None`` when there is nothing to keep, or no cache to keep it in)."""
    cfg, data, teacher = parts.cfg, parts.data, parts.teacher
    assert cfg.kd is not None and teacher is not None
    if plan is None or teacher.joint or dist_ctx is not None:
        return check_teacher(cfg.kd, teacher, parts.eval_loaders["test"], data, log), None
    memo = check_memo(cfg, plan, data, parts.device)
    recalled, problem = recall_check(memo, len(data.test))
    if problem is not None:
        log(f"the remembered teacher check is not used ({problem}); evaluating the teacher")
    if recalled is not None:
        accept_teacher(
            cfg.kd, teacher, recalled, data, log, source=f" (checked before: {memo.path.name})"
        )
        return recalled, None
    return check_teacher(cfg.kd, teacher, parts.eval_loaders["test"], data, log), memo
