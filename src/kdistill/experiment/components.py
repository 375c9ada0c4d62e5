"""From a ``RunConfig`` to the parts of a run: device, data loaders, student, teacher(s),
objective, optimizer; and checking that a teacher can teach."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.cache import TeacherCache
from kdistill.config.schema import DataConfig, KDConfig, ModelConfig, RunConfig
from kdistill.data import BatchLoader, CropFlip, DataBundle
from kdistill.data.loader import ViewSampler
from kdistill.engine.checkpoint import (
    CheckpointError,
    ModelSpec,
    load_model,
)
from kdistill.engine.distributed import DistContext
from kdistill.engine.metrics import ClassificationMeter
from kdistill.engine.trainer import (
    TrainingError,
)
from kdistill.losses import DistillationLoss
from kdistill.models import build_model
from kdistill.objectives import Distiller, Supervised
from kdistill.teachers import EnsembleTeacher, FrozenTeacher, Renormalize, logits_of
from kdistill.teachers.cached import CachedTeacher
from kdistill.trust import CodeTrust, UntrustedCodeError

Log = Callable[[str], None]


TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TeacherCheckError(TrainingError):
    """The teacher is too weak to teach (untrained, wrong checkpoint, wrong data)."""


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


def code_trust(cfg: RunConfig, trust_code: bool = False) -> CodeTrust:
    """What model files may name in a run of ``cfg``: the import paths the config itself
    writes, or anything with ``trust_code`` (``--trust-code``)."""
    return CodeTrust.of(cfg.user_code(), trust_code=trust_code)


def build_student(
    cfg: RunConfig, data: DataBundle, trust: CodeTrust | None = None
) -> tuple[nn.Module, ModelSpec]:
    """The model being trained, freshly initialized or from ``model.checkpoint``."""
    m = cfg.model
    if m.checkpoint is not None:
        model, spec = load_model(
            m.checkpoint, arch=m.arch, args=m.args or None, trust=trust or code_trust(cfg)
        )
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
    kd: KDConfig, data: DataBundle, data_cfg: DataConfig, log: Log, trust: CodeTrust
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
                model, spec = load_model(
                    t.checkpoint, arch=t.arch, args=t.args or None, trust=trust
                )
            except (CheckpointError, UntrustedCodeError) as e:
                raise type(e)(f"{what}: {e}") from None
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


def build_teacher(
    cfg: RunConfig, data: DataBundle, log: Log, trust: CodeTrust | None = None
) -> TeacherSetup:
    """Load ``kd.teachers`` and wrap them: frozen (and ensembled), or trainable in joint mode."""
    kd = cfg.kd
    assert kd is not None
    loaded = load_teachers(kd, data, cfg.data, log, trust or code_trust(cfg))
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


def joint_teacher_network(teacher: TeacherSetup) -> nn.Module:
    """The trainable network of joint training (without its input adapter)."""
    live = teacher.live
    return live[1] if isinstance(live, nn.Sequential) else live


def teacher_predictor(teacher: TeacherSetup) -> Callable[[torch.Tensor], torch.Tensor]:
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
    paths = {
        "teacher_checkpoints": [t[2] for t in teachers],
        # where they were, for reports made from another directory (runs/<name> is a link)
        "teacher_checkpoints_resolved": [str(Path(t[2]).resolve()) for t in teachers],
    }
    if teacher.joint:
        return paths, []
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
    info: dict[str, Any] = {**paths, "teachers": members}
    info["teacher_test_top1"] = top1
    minimum = kd.min_teacher_top1 if kd.min_teacher_top1 is not None else 2.0 / data.num_classes
    if top1 < minimum:
        raise TeacherCheckError(
            f"the teacher reaches only {top1:.2%} test top-1 on {data.name} (chance is "
            f"{1 / data.num_classes:.1%}; required: {minimum:.1%}, kd.min_teacher_top1). It cannot "
            "teach: check kd.teachers[].checkpoint points at a trained model for this dataset."
        )
    return info, predictions
