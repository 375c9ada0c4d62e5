"""The run's teachers: loaded with their identities, wrapped, and checked before they teach."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.config.loader import recipes_writing
from kdistill.config.schema import DataConfig, KDConfig, ModelConfig, RunConfig
from kdistill.data import DataBundle
from kdistill.engine.distributed import from_first_process
from kdistill.engine.evaluation import Evaluation, evaluate
from kdistill.engine.trainer import TrainingError
from kdistill.experiment.loading import check_model_fits_data, load_model
from kdistill.experiment.precision import (
    PrecisionChoice,
    Probe,
    choose_teacher_precision,
    forward_probe,
)
from kdistill.extras import require
from kdistill.files import sha256_file
from kdistill.models import ModelFileError, ModelSpec, build_model
from kdistill.models.foreign import (
    is_plain_state_dict,
    load_plain_weights,
    read_state_dict,
    recorded_arch,
)
from kdistill.record import TeacherIdentity
from kdistill.teachers import EnsembleTeacher, FrozenTeacher, Renormalize, Resize
from kdistill.trust import CodeTrust, UntrustedCodeError
from kdistill.types import TeacherOutput, logits_of

Log = Callable[[str], None]


class TeacherCheckError(TrainingError):
    """The teacher is too weak to teach (untrained, wrong checkpoint, wrong data)."""


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


def input_adapter(spec: ModelSpec, data: DataBundle, normalize: bool) -> nn.Module | None:
    """What turns the pipeline's inputs into those ``spec`` expects: a :class:`Renormalize`
    to its normalization, then a :class:`Resize` to its resolution (each only when needed)."""
    channels = data.input_shape[0]
    zeros, ones = (0.0,) * channels, (1.0,) * channels
    have = (data.mean, data.std) if normalize else (zeros, ones)
    want = (spec.mean or zeros, spec.std or ones)
    steps: list[nn.Module] = []
    if not all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        for x, y in zip(have, want)
        for a, b in zip(x, y)
    ):
        steps.append(Renormalize(have[0], have[1], want[0], want[1]))
    if len(spec.input_shape) == 3 and spec.input_shape[1:] != data.input_shape[1:]:
        steps.append(Resize(spec.input_shape[1:]))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else nn.Sequential(*steps)


def hugging_face_input(t: ModelConfig, log: Log, what: str) -> ModelConfig:
    """A Hugging Face teacher's own input normalization and size, from the image processor
    saved beside it (``preprocessor_config.json``), read by transformers itself: every format
    it reads (a plain-integer ``size`` of older processors, a ``feature_extractor_type``), with
    its defaults for what the file leaves out (``image_std`` without ``image_mean``)."""
    assert t.arch is not None
    directory = Path(t.arch.partition(":")[2]).expanduser()
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return t
    transformers = require("transformers", "hf")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{what}: {path} cannot be read as an image processor ({e})") from None
    changes: dict[str, Any] = {}
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if getattr(processor, "do_normalize", True) and mean is not None and std is not None:
        changes["input_mean"] = tuple(float(v) for v in _as_list(mean))
        changes["input_std"] = tuple(float(v) for v in _as_list(std))
    size = getattr(processor, "size", None)
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    height, width = get("height"), get("width")
    side = height if height is not None and height == width else get("shortest_edge")
    if isinstance(side, int):
        changes["input_size"] = side
    if changes:
        log(f"{what}: inputs as its image processor asks ({path.name}): {changes}")
    return replace(t, **changes)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def foreign_input(t: ModelConfig, spec: ModelSpec, data: DataBundle, what: str) -> ModelSpec:
    """``spec`` with the input normalization and resolution the config gives a teacher trained
    elsewhere (``input_mean`` / ``input_std`` / ``input_size``)."""
    shape = data.input_shape
    if t.input_size is not None:
        if len(shape) != 3:
            raise ModelFileError(
                f"{what}.input_size: the data are vectors {shape}, not images; there is no size "
                "to resize"
            )
        shape = (shape[0], t.input_size, t.input_size)
    if t.input_mean is not None and len(t.input_mean) != shape[0]:
        raise ModelFileError(
            f"{what}.input_mean has {len(t.input_mean)} values, but the data have {shape[0]} "
            "channel(s): give one per channel"
        )
    return replace(
        spec,
        input_shape=shape,
        mean=tuple(t.input_mean) if t.input_mean is not None else spec.mean,
        std=tuple(t.input_std) if t.input_std is not None else spec.std,
    )


@dataclass(frozen=True)
class LoadedTeacher:
    """One teacher network with its spec and identity (``identity`` is ``None`` for a teacher
    trained jointly from scratch)."""

    model: nn.Module
    spec: ModelSpec
    reference: str
    identity: TeacherIdentity | None
    # a language model's own tokenizer when it is not the run's (kd.cross_tokenizer)
    tokenizer: Any = None


def missing_teacher(what: str, reference: str) -> str:
    """The message for a teacher that does not exist: which recipe or command makes it."""
    makers = recipes_writing(reference)
    how = (
        f"train it first: kdistill train {makers[0]} (that recipe's run is linked at {reference})"
        if makers
        else "train it first (kdistill train ...; a run directory is linked at <out_dir>/<name>)"
    )
    return (
        f"{what}: the teacher {reference} does not exist; {how}, or point "
        f"{what.replace('[', '.').replace(']', '')}.checkpoint (--kd-resume) at a trained run "
        "directory or model file"
    )


def plain_teacher(
    t: ModelConfig,
    what: str,
    data: DataBundle,
    data_cfg: DataConfig,
    log: Log,
) -> LoadedTeacher:
    """A teacher from weights trained elsewhere (a plain state dict or a foreign
    ``.safetensors``): built from the architecture the config names, the weights strictly
    loaded. It is taken to expect the student's input normalization. The architecture comes
    from the user's own config, so an import path there is theirs to run."""
    assert t.checkpoint is not None
    named_by = "the config"
    if t.arch is None:
        arch = recorded_arch(t.checkpoint, what)  # Distiller's checkpoints name theirs
        if arch is not None:
            t, named_by = replace(t, arch=arch), "the checkpoint's arch"
    if t.arch is None:
        raise ModelFileError(
            f"{what}: {t.checkpoint} holds weights without an architecture (a plain PyTorch state "
            f"dict or a .safetensors file not written by kdistill): name it with "
            f"{what.replace('[', '.').replace(']', '')}.arch (--kd-teacher ARCH), e.g. resnet20_cifar"
        )
    if t.arch.startswith("hf:") and not t.describes_input:
        t = hugging_face_input(t, log, what)
    spec = foreign_input(
        t, model_spec(t, data, data_cfg), data, what.replace("[", ".").replace("]", "")
    )
    model = build_model(spec.arch, data.num_classes, spec.input_shape, spec.args)
    for note in getattr(model, "kdistill_adapted", ()):
        log(f"{what} {spec.arch}: {note}")
    load_plain_weights(model, read_state_dict(t.checkpoint), f"{what} ({t.checkpoint})")
    model.eval()
    file = Path(t.checkpoint)
    identity = TeacherIdentity(
        reference=t.checkpoint,
        file=str(file.resolve()),
        sha256=sha256_file(file),
        arch=spec.arch,
    )
    log(f"{what}: {identity.describe()} (plain weights, architecture {spec.arch} from {named_by})")
    return LoadedTeacher(model, spec, t.checkpoint, identity)


def load_teachers(
    kd: KDConfig, data: DataBundle, data_cfg: DataConfig, log: Log, trust: CodeTrust
) -> list[LoadedTeacher]:
    """The teacher networks, weights loaded, each saying what its reference resolved to."""
    teachers = []
    for i, t in enumerate(kd.teachers):
        what = f"kd.teachers[{i}]"
        if t.checkpoint is None:  # joint training from scratch (validated by KDConfig)
            spec = model_spec(t, data, data_cfg)
            model = build_model(spec.arch, data.num_classes, data.input_shape, spec.args)
            teachers.append(LoadedTeacher(model, spec, "(trained jointly)", None))
            continue
        if not Path(t.checkpoint).exists():
            raise ModelFileError(missing_teacher(what, t.checkpoint))
        if is_plain_state_dict(t.checkpoint):
            teachers.append(plain_teacher(t, what, data, data_cfg, log))
            continue
        if t.describes_input:
            raise ModelFileError(
                f"{what}: {t.checkpoint} is a kdistill model file, which records the "
                "normalization and size its inputs need; input_mean / input_std / input_size "
                "are for teachers trained elsewhere (plain weights, timm, Hugging Face)"
            )
        try:
            loaded = load_model(t.checkpoint, arch=t.arch, args=t.args or None, trust=trust)
        except (ModelFileError, UntrustedCodeError) as e:
            raise type(e)(f"{what}: {e}") from None
        spec = loaded.spec
        check_model_fits_data(spec, data, f"{what} ({t.checkpoint})")
        record = loaded.source.record
        identity = TeacherIdentity(
            reference=t.checkpoint,
            file=str(loaded.source.file.resolve()),
            sha256=sha256_file(loaded.source.file),
            arch=spec.arch,
            run_dir=str(Path(t.checkpoint).resolve()) if record is not None else None,
            record_test_top1=record.test_top1 if record is not None else None,
        )
        note = "" if loaded.checked else "; written by an older kdistill, its weights are unchecked"
        log(f"{what}: {identity.describe()}{note}")
        if spec.dataset is not None and spec.dataset != data.name:
            log(f"note: {what} was trained on {spec.dataset}, the student trains on {data.name}")
        teachers.append(LoadedTeacher(loaded.model, spec, t.checkpoint, identity))
    return teachers


@dataclass
class TeacherSetup:
    """The configured teacher(s), loaded.

    Attributes:
        loaded: each network with its spec and identity.
        live: what runs the teacher: a ``FrozenTeacher``, an ``EnsembleTeacher``, or in joint
            training the trainable network (behind its input adapter, if any).
        members: the frozen members (one for a single teacher); empty in joint training.
        precision: the frozen members' precision and why (``None`` in joint training, and
            while ``probe`` is pending).
        probe: ``kd.teacher_precision: auto``'s timed choice, not made yet: a run that reads a
            finished teacher cache takes the cache's precision instead (the teacher never runs
            in training); :meth:`settle_precision` makes it otherwise.
    """

    loaded: list[LoadedTeacher]
    live: nn.Module
    members: list[FrozenTeacher]
    precision: PrecisionChoice | None = None
    probe: Callable[[], PrecisionChoice] | None = None

    def set_precision(self, choice: PrecisionChoice, log: Log) -> None:
        """Run the frozen members in ``choice`` (the first process's choice in every process of
        a data-parallel run: one run never mixes precisions, nor keys its cache two ways)."""
        choice = from_first_process(choice)
        self.precision, self.probe = choice, None
        for member in self.members:
            member.dtype = choice.dtype
        log(f"teacher precision: {choice.describe()}")

    def settle_precision(self, log: Log) -> None:
        """Make ``auto``'s timed choice now if it is still pending."""
        if self.probe is not None:
            self.set_precision(self.probe(), log)

    @property
    def joint(self) -> bool:
        return not self.members

    @property
    def identities(self) -> tuple[TeacherIdentity, ...]:
        return tuple(t.identity for t in self.loaded if t.identity is not None)

    @property
    def network(self) -> nn.Module:
        """The trainable network of joint training (without its input adapter)."""
        live = self.live
        return live[1] if isinstance(live, nn.Sequential) else live

    def predict(self, inputs: Tensor) -> Tensor:
        """The teacher's predicted classes (in joint training, in eval mode for the moment)."""
        if not self.joint:
            return self.live(inputs).predictions()
        was = self.live.training
        self.live.eval()
        try:
            return logits_of(self.live(inputs)).argmax(dim=1)
        finally:
            self.live.train(was)


def build_teacher(
    cfg: RunConfig,
    data: DataBundle,
    log: Log,
    trust: CodeTrust,
    *,
    device: torch.device | None = None,
    recorded_precision: str | None = None,
    defer_probe: bool = False,
) -> TeacherSetup:
    """Load ``kd.teachers`` and wrap them: frozen (and ensembled), or trainable in joint mode.

    The frozen members run in ``kd.teacher_precision``; ``auto`` is chosen on ``device`` (the
    CPU by default; see :mod:`kdistill.experiment.precision`), or is ``recorded_precision``,
    the precision an interrupted run began with. With ``defer_probe`` (a run that will read a
    teacher cache), a choice that needs the timed probe is left pending
    (:attr:`TeacherSetup.probe`): the cache may already say which precision its outputs are in."""
    kd = cfg.kd
    assert kd is not None
    loaded = load_teachers(kd, data, cfg.data, log, trust)
    if kd.teacher_weight > 0:
        first = loaded[0]
        adapter = input_adapter(first.spec, data, cfg.data.normalize)
        live = first.model if adapter is None else nn.Sequential(adapter, first.model)
        return TeacherSetup(loaded, live.train(), [])
    members = [
        FrozenTeacher(
            t.model,
            input_transform=input_adapter(t.spec, data, cfg.data.normalize),
            bn_policy=kd.bn_policy,
            channels_last=kd.teacher_channels_last,
        )
        for t in loaded
    ]
    device = torch.device("cpu") if device is None else device
    for member in members:
        member.to(device)
    if len(members) == 1:
        setup = TeacherSetup(loaded, members[0], members)
    else:
        ensemble = EnsembleTeacher(
            members,
            weights=kd.ensemble_weights,
            reduce=kd.ensemble_reduce,
            temperature=kd.temperature if kd.ensemble_reduce == "probs" else None,
        )
        setup = TeacherSetup(loaded, ensemble, members)

    def choose(probe: Probe) -> PrecisionChoice:
        return choose_teacher_precision(
            kd.teacher_precision, device, probe, recorded=recorded_precision
        )

    timed = forward_probe(members, data.input_shape, device)
    if not defer_probe:
        setup.set_precision(choose(timed), log)
        return setup
    try:
        setup.set_precision(choose(_no_probe_yet), log)
    except _ProbeNeeded:  # only auto's timed choice is left for later
        setup.probe = lambda: choose(timed)
    return setup


def _no_probe_yet() -> tuple[float, float]:
    raise _ProbeNeeded


class _ProbeNeeded(Exception):
    """Raised by a stand-in probe: the precision choice needs timing."""


def _scores(output: TeacherOutput) -> Tensor:
    """Logits, or log-probabilities (whose softmax is the probabilities) for the metrics."""
    return output.logits if output.logits is not None else output.probs.clamp_min(1e-12).log()  # type: ignore[union-attr]


@dataclass(frozen=True)
class TeacherCheck:
    """The teacher on the test split: its accuracy, each member's, and its predictions."""

    test_top1: float
    member_top1: tuple[float, ...]
    test: Evaluation


def check_teacher(
    kd: KDConfig, teacher: TeacherSetup, test_loader: object, data: DataBundle, log: Log
) -> TeacherCheck | None:
    """Evaluate the frozen teacher(s) on the test split and refuse one that cannot teach.

    Returns ``None`` in joint training (the teacher is still learning).

    Raises:
        TeacherCheckError: test top-1 below ``kd.min_teacher_top1`` (default twice chance).
    """
    if teacher.joint:
        return None
    test = evaluate(lambda x: _scores(teacher.live(x)), test_loader, data.num_classes)  # type: ignore[arg-type]
    members = [test.metrics["top1"]]
    if len(teacher.loaded) > 1:  # an ensemble: each member's own accuracy too
        members = [
            evaluate(lambda x, m=m: _scores(m(x)), test_loader, data.num_classes).metrics["top1"]  # type: ignore[arg-type]
            for m in teacher.members
        ]
    check = TeacherCheck(test.metrics["top1"], tuple(members), test)
    accept_teacher(kd, teacher, check, data, log)
    return check


def accept_teacher(
    kd: KDConfig,
    teacher: TeacherSetup,
    check: TeacherCheck,
    data: DataBundle,
    log: Log,
    source: str = "",
) -> None:
    """Log each member's test top-1 (``source``: where the figures come from, if they were
    not measured just now) and refuse a teacher below ``kd.min_teacher_top1``.

    Raises:
        TeacherCheckError: test top-1 below ``kd.min_teacher_top1`` (default twice chance).
    """
    perplexity = check.test.metrics.get("perplexity")  # a language model (one teacher)
    for i, (t, top1) in enumerate(zip(teacher.loaded, check.member_top1, strict=True)):
        measured = (
            f"test perplexity {perplexity:.2f} (top-1 {top1:.1%})"
            if perplexity is not None
            else f"test top-1 {top1:.2%}"
        )
        log(f"teacher {i}: {t.spec.arch} from {t.reference}: {measured}{source}")
    top1 = check.test_top1
    minimum = kd.min_teacher_top1 if kd.min_teacher_top1 is not None else 2.0 / data.num_classes
    if top1 < minimum:
        raise TeacherCheckError(
            f"the teacher reaches only {top1:.2%} test top-1 on {data.name} (chance is "
            f"{1 / data.num_classes:.1%}; required: {minimum:.1%}, kd.min_teacher_top1). It cannot "
            "teach: check kd.teachers[].checkpoint points at a trained model for this dataset."
        )
