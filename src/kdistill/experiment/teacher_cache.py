"""The run's side of the teacher-output cache: what it is keyed on, where it lives, building it.

:mod:`kdistill.cache` stores and reads outputs; this module decides *which* outputs a run needs
(teacher weights, data, preprocessing, augmentation views, storage settings), computes them
through exactly the data pipeline the student trains on, and hands back an open cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.cache import (
    CacheError,
    CacheLayout,
    DamagedCacheError,
    TeacherCache,
    build_cache,
    fingerprint,
    open_cache,
)
from kdistill.cache.fingerprint import array_digest, module_digest
from kdistill.cache.store import CACHE_FORMAT_VERSION, MANIFEST
from kdistill.config.schema import RunConfig
from kdistill.data import (
    Augment,
    Batch,
    DataBundle,
    ImageFiles,
    StreamLoader,
    build_augment,
    loader_for,
)
from kdistill.engine.distributed import DistContext, barrier
from kdistill.experiment.precision import TEACHER_DTYPES, PrecisionChoice
from kdistill.experiment.teachers import TeacherSetup
from kdistill.files import TEACHER_CACHES, ArtifactError, read_json, remove_stale_temporaries
from kdistill.locks import exclusive_lock

Log = Callable[[str], None]
VIEW_SELECTION_SEED = 0


def select_views(num_samples: int, augment: Augment | None, per_sample: int | None) -> np.ndarray:
    """``(N, K)`` the views to store for each sample: every view when ``per_sample`` is null or
    covers them all, else ``per_sample`` distinct views per sample (seeded, fixed)."""
    if augment is None:
        return np.zeros((num_samples, 1), np.int32)
    total = augment.num_views
    if per_sample is None or per_sample >= total:
        return np.tile(np.arange(total, dtype=np.int32), (num_samples, 1))
    rng = np.random.default_rng(VIEW_SELECTION_SEED)
    keys = rng.random((num_samples, total))
    return np.sort(np.argsort(keys, axis=1)[:, :per_sample], axis=1).astype(np.int32)


def describe_cache(
    cfg: RunConfig,
    data: DataBundle,
    teacher: TeacherSetup,
    augment: Augment | None,
    views: np.ndarray,
) -> dict[str, Any]:
    """Everything that determines the cached outputs (the fingerprint's input)."""
    kd = cfg.kd
    assert kd is not None
    settings = kd.teacher_cache
    members = []
    for member, loaded in zip(teacher.members, teacher.loaded, strict=True):
        members.append(
            {
                "arch": loaded.spec.arch,
                "args": dict(loaded.spec.args),
                "weights": module_digest(member.model),
                "input_transform": None
                if member.input_transform is None
                else module_digest(member.input_transform),
                "bn_policy": member.bn_policy,
                "dtype": str(member.dtype),
                "channels_last": member.channels_last,
            }
        )
    storage: dict[str, Any] = {"dtype": settings.dtype, "topk": settings.topk}
    if settings.topk is not None:  # probabilities at one temperature, members merged at build
        storage.update(
            temperature=kd.temperature, reduce=kd.ensemble_reduce, weights=kd.ensemble_weights
        )
    train = data.train
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "teachers": members,
        "data": {
            "name": data.name,
            "source": data.source,
            "num_samples": len(train),
            "sample_shape": list(data.input_shape),
            "ids": array_digest(train.ids),
            # streamed images: their files' paths, sizes and times (the images are not read)
            "images": train.images.digest()
            if isinstance(train.images, ImageFiles)
            else array_digest(train.images),
        },
        "preprocessing": {
            "normalize": cfg.data.normalize,
            "mean": list(data.mean) if cfg.data.normalize else None,
            "std": list(data.std) if cfg.data.normalize else None,
        },
        "augmentation": None if augment is None else augment.describe(),
        "views": {"per_sample": int(views.shape[1]), "table": array_digest(views)},
        "storage": storage,
    }


def _follow_cached_precision(
    cfg: RunConfig,
    teacher: TeacherSetup,
    description: dict[str, Any],
    log: Log,
    *,
    force_build: bool,
) -> dict[str, Any]:
    """With ``kd.teacher_precision: auto``, the precision of a finished cache of the teacher's
    outputs is taken rather than computing them again, and rather than timing the teacher (a
    pending probe, :attr:`TeacherSetup.probe`): the teacher never runs in a cached run's
    training, so its speed in either precision does not matter. That covers a cache built
    before ``auto``, in fp32, on a machine where ``auto`` picks bf16, and one built on another
    machine. The teacher then runs in that precision for the rest of the run too (its check on
    the test split), and the record says why. A pending choice with no single finished cache to
    follow (none, both, or ``--rebuild``) is made by the probe. Returns the description of the
    outputs the run uses."""
    chosen = teacher.precision
    if teacher.probe is None and (chosen is None or not chosen.automatic):
        return description
    candidates = {
        precision: {
            **description,
            "teachers": [
                {**t, "dtype": str(TEACHER_DTYPES[precision])} for t in description["teachers"]
            ],
        }
        for precision in ("bf16", "fp32")
    }
    finished = {} if force_build else {p: _finished(cfg, d) for p, d in candidates.items()}
    found = [(p, path) for p, path in finished.items() if path is not None]
    if teacher.probe is not None:
        if len(found) == 1:
            precision, path = found[0]
            why = f"auto: the teacher cache {path} holds its outputs in {precision}"
            teacher.set_precision(PrecisionChoice(precision, why, automatic=True), log)
        else:
            teacher.settle_precision(log)
    else:  # chosen by the probe already: follow a cache that holds only the other precision
        assert chosen is not None
        if len(found) == 1 and found[0][0] != chosen.precision:
            precision, path = found[0]
            why = f"auto: the teacher cache {path} holds its outputs in {precision}"
            teacher.set_precision(PrecisionChoice(precision, why), log)
    assert teacher.precision is not None
    return candidates[teacher.precision.precision]


def _finished(cfg: RunConfig, description: dict[str, Any]) -> Path | None:
    """The directory of a finished cache of exactly these outputs, or ``None`` (its manifest
    only is read here; the arrays are verified when the cache is opened)."""
    fp = fingerprint(description)
    path = cache_path(cfg, fp)
    try:
        manifest = read_json(path / MANIFEST, "teacher-cache manifest")
    except ArtifactError:
        return None
    return path if isinstance(manifest, dict) and manifest.get("fingerprint") == fp else None


def cache_path(cfg: RunConfig, fp: str) -> Path:
    kd = cfg.kd
    assert kd is not None
    if kd.teacher_cache.dir is not None:
        return Path(kd.teacher_cache.dir)
    return Path(cfg.out_dir) / TEACHER_CACHES / fp[:16]


@dataclass(frozen=True)
class CachePlan:
    """Which teacher outputs a run reads and where: decided before anything is computed.

    Attributes:
        description: what determines the outputs (the fingerprint's input).
        fingerprint: the cache's identity.
        path: its directory.
        augment: the training augmentation whose views are stored.
        views: ``(N, K)`` the views stored for each sample.
        finished: whether a finished cache of exactly these outputs is there (its manifest
            only was read; the arrays are verified when it is opened).
    """

    description: dict[str, Any]
    fingerprint: str
    path: Path
    augment: Augment | None
    views: np.ndarray
    finished: bool


def cache_skipped(cfg: RunConfig) -> str | None:
    """Why a run of ``cfg`` with a teacher cache enabled still runs its teacher online, or
    ``None`` when it reads the cache."""
    kd = cfg.kd
    assert kd is not None
    if kd.bn_policy == "batch_stats":
        return (
            "kd.bn_policy=batch_stats makes each teacher output depend on the rest of its batch, "
            "which cannot be replayed; the teacher runs online"
        )
    return None


def reads_teacher_cache(cfg: RunConfig) -> bool:
    """Whether a run of ``cfg`` reads its frozen teacher's outputs from a cache."""
    kd = cfg.kd
    return (
        kd is not None
        and kd.teacher_cache.enabled
        and kd.teacher_weight == 0
        and cache_skipped(cfg) is None
    )


def plan_teacher_cache(
    cfg: RunConfig,
    data: DataBundle,
    teacher: TeacherSetup | None,
    *,
    log: Log = print,
    force_build: bool = False,
) -> CachePlan | None:
    """The cache a run of ``cfg`` reads, or ``None`` when it uses none (or cannot: then the
    online teacher is used and the log says why). Settles ``auto``'s teacher precision: from a
    finished cache when there is one to follow, else by the timed probe."""
    kd = cfg.kd
    if kd is None or teacher is None or not kd.teacher_cache.enabled:
        return None
    skipped = cache_skipped(cfg)
    if skipped is not None:
        log(f"teacher cache NOT used: {skipped}")
        return None
    topk = kd.teacher_cache.topk
    if topk is not None and topk > data.num_classes:
        raise ValueError(
            f"kd.teacher_cache.topk={topk} is more than the {data.num_classes} classes of "
            f"{data.name}: use at most {data.num_classes}, or null to store all logits"
        )
    augment = build_augment(cfg.data.augment)
    views = select_views(len(data.train), augment, kd.teacher_cache.views)
    description = describe_cache(cfg, data, teacher, augment, views)
    description = _follow_cached_precision(cfg, teacher, description, log, force_build=force_build)
    fp = fingerprint(description)
    finished = not force_build and _finished(cfg, description) is not None
    return CachePlan(description, fp, cache_path(cfg, fp), augment, views, finished)


def prepare_teacher_cache(
    cfg: RunConfig,
    data: DataBundle,
    teacher: TeacherSetup | None,
    device: torch.device,
    *,
    progress: bool = True,
    log: Log = print,
    force_build: bool = False,
    dist_ctx: DistContext | None = None,
    wait_for_builder: bool = True,
    plan: CachePlan | None = None,
) -> TeacherCache | None:
    """The open cache this run reads its teacher outputs from, built if needed; ``None`` when
    the run uses no cache (``plan``: :func:`plan_teacher_cache`'s, made here without it).

    One process builds a cache at a time (an exclusive lock beside it): a run that needs a cache
    someone else is building waits for it and then reads it (``wait_for_builder``); otherwise
    (``kdistill cache build``) the second builder stops with an error naming the first."""
    if plan is None:
        plan = plan_teacher_cache(cfg, data, teacher, log=log, force_build=force_build)
    if plan is None:
        return None
    kd = cfg.kd
    assert kd is not None and teacher is not None
    path, fp = plan.path, plan.fingerprint
    # One builder at a time per cache directory: runs of a sweep that start together wait for
    # the first to finish building, then read what it built. The processes of one
    # data-parallel run build together instead, coordinated by barriers.
    lock = (
        exclusive_lock(path, f"teacher cache {path}", wait=wait_for_builder, log=log)
        if dist_ctx is None
        else contextlib.nullcontext()
    )
    with lock:
        if not force_build:
            try:
                cache = open_cache(path, fp)
            except CacheError as e:
                if kd.teacher_cache.on_mismatch == "error":
                    raise CacheError(
                        f"{e}. Set kd.teacher_cache.on_mismatch=rebuild to rebuild it."
                    ) from None
                if isinstance(e, DamagedCacheError):
                    log(f"the teacher cache {path} is damaged ({e.problem}); rebuilding it")
                else:
                    log(f"{e}; rebuilding it")
                cache = None
            if cache is not None:
                log(f"teacher cache: reading {path} ({plan.views.shape[1]} view(s) per sample)")
                return cache
        if dist_ctx is not None:
            barrier()  # every process has looked before process 0 may clear a stale cache
        return _build(
            cfg,
            data,
            teacher,
            plan.augment,
            plan.views,
            plan.description,
            fp,
            path,
            device,
            progress,
            log,
            dist_ctx,
        )


def _build(
    cfg: RunConfig,
    data: DataBundle,
    teacher: TeacherSetup,
    augment: Augment | None,
    views: np.ndarray,
    description: dict[str, Any],
    fp: str,
    path: Path,
    device: torch.device,
    progress: bool,
    log: Log,
    dist_ctx: DistContext | None,
) -> TeacherCache:
    kd = cfg.kd
    assert kd is not None
    settings = kd.teacher_cache
    stats = {"mean": data.mean, "std": data.std} if cfg.data.normalize else {}
    # The same pipeline as training (augmentation, normalization), so cached outputs are
    # exactly the teacher's outputs on the inputs the student will see.
    pipeline = loader_for(
        data.train,
        cfg.data.eval_batch_size,
        device=device,
        augment=augment,
        workers=cfg.data.workers,
        **stats,
    )
    members = teacher.members
    remove_stale_temporaries(path.with_name(path.name + ".partial"))
    # Crops of the files: the build records each view's crop box, and training replays them.
    crops = augment is not None and augment.on_files

    def batches_of(planned: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[Batch, Any]]:
        as_tensors = [
            (torch.from_numpy(p), torch.from_numpy(v.astype(np.int64))) for p, v in planned
        ]
        if isinstance(pipeline, StreamLoader):  # decoded ahead by the worker processes
            return pipeline.stream(as_tensors)  # type: ignore[arg-type]
        return ((pipeline.make_batch(p, v), None) for p, v in as_tensors)

    def compute_batches(planned: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[Any]:
        for batch, boxes in batches_of(planned):
            logits = torch.stack([m(batch.inputs).logits.float() for m in members], dim=1)
            yield (logits, boxes.numpy()) if crops else logits

    layout = CacheLayout(
        num_samples=len(data.train),
        views_per_sample=int(views.shape[1]),
        members=len(members),
        num_classes=data.num_classes,
        dtype=settings.dtype,
        topk=settings.topk,
        temperature=kd.temperature if settings.topk is not None else None,
        reduce=kd.ensemble_reduce,
        weights=kd.ensemble_weights,
        crops=crops,
    )
    n_out = layout.num_samples * layout.views_per_sample
    log(
        f"teacher cache: computing {n_out:,} teacher outputs ({layout.views_per_sample} view(s) x {layout.num_samples:,} samples) into {path}"
    )
    started = time.perf_counter()
    cache = build_cache(
        path,
        fingerprint=fp,
        description=description,
        layout=layout,
        sample_ids=data.train.ids.numpy(),
        views=views,
        compute=None,
        compute_batches=compute_batches,
        batch_size=cfg.data.eval_batch_size,
        progress=progress,
        log=log,
        rank=dist_ctx.rank if dist_ctx is not None else 0,
        world_size=dist_ctx.world_size if dist_ctx is not None else 1,
        barrier=barrier,
    )
    log(
        f"teacher cache: built in {time.perf_counter() - started:.1f}s, {cache.size_bytes() / 2**20:.1f} MiB"
    )
    return cache
