"""The run configuration: frozen dataclasses that are the single home of every default.

Each field carries a one-line description in ``metadata["doc"]`` (rendered into
``docs/config.md``); cross-field checks live in ``__post_init__`` and name the bad value and what
would be valid. YAML files hold values only; :mod:`kdistill.config.loader` turns them into these
objects. This module never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from kdistill.methods import METHODS, method_args, method_info
from kdistill.policies import (
    LANGUAGE_MODEL_POLICIES,
    ChannelPruningPolicy,
    LanguageModelPruningPolicy,
    PolicyConfig,
    PruningPolicy,
    QuantizationPolicy,
    ThinningPolicy,
)
from kdistill.validation import (
    BatchNormPolicy,
    ConfigError,
    CrossTokenizerMethod,
    DivergenceKind,
    EnsembleReduce,
    EpochWindow,
    bpe_vocab_size,
    check_fields,
    check_temperature,
    doc,
    is_number,
    normalized_weights,
    resolve_weights,
)

DatasetName = Literal[
    "digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "npz",
    "pydocs", "text",
]  # fmt: skip
# Text for language models: CPython's own language reference, or the user's files.
TEXT_DATASETS = ("pydocs", "text")
OptimizerName = Literal["sgd", "adamw"]
ParallelKind = Literal["ddp", "fsdp"]
ScheduleName = Literal["cosine", "multistep", "exponential", "onecycle", "constant"]
Precision = Literal["fp32", "bf16"]
TeacherPrecision = Literal["auto", "fp32", "bf16", "fp16"]
CollapseAction = Literal["warn", "stop", "ignore"]
CacheDtype = Literal["float16", "float32"]
CacheMismatch = Literal["rebuild", "error"]
DataPipeline = Literal["auto", "memory", "stream"]
CropKind = Literal["pad", "resized"]


def _require(ok: bool, message: str) -> None:
    """The schema's checks raise :class:`ConfigError` (a ``ValueError``), built from YAML or in
    Python alike."""
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, replayable: every augmented input is a numbered *view* of its
    sample, so a cached teacher output belongs to exactly the input the student sees."""

    crop: CropKind = doc(
        "pad: a random translation (crop_padding); resized: a random-resized crop of the "
        "full-resolution image file (scale, ratio, views; streaming pipeline, image folders)",
        "pad",
    )
    crop_padding: int = doc(
        "random crop after zero-padding by this many pixels (a random translation of up to that "
        "many pixels: Hinton's input jitter); 0 turns it off",
        0,
    )
    hflip: bool = doc("random horizontal flip with probability 0.5", False)
    scale: tuple[float, float] = doc(
        "resized crops: the range of the crop's area, as a fraction of the image's", (0.08, 1.0)
    )
    ratio: tuple[float, float] = doc(
        "resized crops: the range of the crop's aspect ratio (width / height)", (0.75, 4 / 3)
    )
    views: int = doc(
        "resized crops: distinct crops per sample, each drawn from a generator seeded by the "
        "sample id and the view number (an epoch picks one per sample)",
        16,
    )

    def __post_init__(self) -> None:
        check_fields(self, "data.augment")
        _require(
            self.crop_padding >= 0,
            f"data.augment.crop_padding must be >= 0 pixels, got {self.crop_padding}",
        )
        _require(
            self.crop == "pad" or self.crop_padding == 0,
            f"data.augment.crop_padding={self.crop_padding} only applies to crop: pad; a "
            "resized crop takes scale and ratio",
        )
        lo, hi = self.scale
        _require(
            0 < lo <= hi <= 1, f"data.augment.scale must be 0 < low <= high <= 1, got {self.scale}"
        )
        lo, hi = self.ratio
        _require(0 < lo <= hi, f"data.augment.ratio must be 0 < low <= high, got {self.ratio}")
        _require(self.views >= 1, f"data.augment.views must be >= 1, got {self.views}")

    @property
    def enabled(self) -> bool:
        return self.crop == "resized" or self.crop_padding > 0 or self.hflip


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split and batched."""

    name: DatasetName = doc("dataset: " + ", ".join(get_args(DatasetName)), "digits")
    root: str | None = doc(
        "where the data lives (directory, or the .npz file); null = the dataset's default "
        "(fashion-mnist: /usr/share/datasets/fashion-mnist)",
        None,
    )
    batch_size: int = doc("training batch size (global, across all processes)", 64)
    eval_batch_size: int = doc("batch size for evaluation and teacher inference", 512)
    val_fraction: float = doc(
        "fraction of the training set held out as a validation split (stable and seeded); 0 = none",
        0.0,
    )
    split_seed: int = doc(
        "seed of the digits train/test split and of the validation split (not the training seed)",
        0,
    )
    image_size: int | None = doc(
        "resize images to image_size x image_size (imagefolder); null = keep their size",
        None,
    )
    normalize: bool = doc(
        "standardize inputs with the training split's per-channel mean and std", True
    )
    augment: AugmentConfig = doc("training augmentation", factory=AugmentConfig)
    pipeline: DataPipeline = doc(
        "memory: decode every image once and batch from memory (fast for data that fits); "
        "stream: DataLoader workers decode image files on the fly (memory does not grow with "
        "the dataset; image folders); auto: stream when the decoded training set would take more "
        "than a quarter of this machine's memory or crops are resized, else memory",
        "auto",
    )
    workers: int | None = doc(
        "DataLoader worker processes of the streaming pipeline; null = one per physical core "
        "the training threads leave free (at least 1). Speed only: not part of the run identity",
        None,
    )
    drop_last: bool = doc(
        "drop the last training batch when it is smaller than batch_size (always on with several "
        "processes, so that every process gets an equal share)",
        False,
    )
    files: tuple[str, ...] = doc(
        "text: the .txt files (one document each) and .jsonl files (a 'text' field, or 'prompt' "
        "and 'completion' fields, the prompt taking no loss) or directories of them",
        (),
    )
    block: int = doc(
        "language models: tokens per training sequence (documents are packed into blocks)", 128
    )
    tokenizer: str | None = doc(
        "language models: 'bytes' (UTF-8 bytes and an end-of-text token), a Hugging Face model "
        "directory or .gguf file, 'smollm2', or 'bpe:<vocab>' (a byte-level BPE tokenizer of "
        "<vocab> tokens trained on the training text, saved in <out_dir>/tokenizers/; a "
        "teacher with another tokenizer then needs kd.cross_tokenizer); null = the pretrained "
        "teacher's own, else bytes",
        None,
    )

    @property
    def is_text(self) -> bool:
        return self.name in TEXT_DATASETS

    def __post_init__(self) -> None:
        check_fields(self, "data")
        _require(self.block >= 2, f"data.block must be >= 2 tokens, got {self.block}")
        bpe_vocab_size(self.tokenizer)
        _require(
            self.name == "text" or not self.files,
            f"data.files is for the text dataset, not {self.name}",
        )
        _require(
            self.name != "text" or bool(self.files),
            "data.name=text needs data.files: .txt / .jsonl files or directories of them",
        )
        _require(
            not self.is_text or self.augment == AugmentConfig(),
            f"data.augment is for images; {self.name} is text",
        )
        _require(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _require(
            self.eval_batch_size >= 1,
            f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}",
        )
        _require(
            0.0 <= self.val_fraction < 1.0,
            f"data.val_fraction must be in [0, 1), got {self.val_fraction}",
        )
        _require(
            self.image_size is None or self.image_size >= 1,
            f"data.image_size must be >= 1 or null, got {self.image_size}",
        )
        _require(
            self.root is None or self.root != "",
            "data.root must be a path or null, got an empty string",
        )
        _require(
            self.workers is None or self.workers >= 0,
            f"data.workers must be >= 0 (0 decodes in the training process) or null, got "
            f"{self.workers}",
        )
        streamable = ("imagefolder",)
        _require(
            self.pipeline != "stream" or self.name in streamable,
            f"data.pipeline=stream reads image files; {self.name} is loaded whole (use memory or "
            f"auto, or the imagefolder dataset)",
        )
        _require(
            self.augment.crop != "resized" or self.name in streamable,
            f"data.augment.crop=resized crops the full-resolution image files of an image folder; "
            f"{self.name} has none (use crop: pad)",
        )
        _require(
            self.augment.crop != "resized" or self.image_size is not None,
            "data.augment.crop=resized needs data.image_size: the size every crop is resized to",
        )
        _require(
            self.augment.crop != "resized" or self.pipeline != "memory",
            "data.augment.crop=resized needs the full-resolution files: use data.pipeline "
            "stream or auto, not memory",
        )


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (LoRA, Hu et al. 2021, through ``peft``): the student's chosen Linear
    layers learn ``W + (alpha / rank) B A`` with ``A`` and ``B`` of rank ``rank``; everything
    else is frozen."""

    rank: int = doc("rank of each adapter", 8)
    alpha: float = doc("scale numerator: the update is (alpha / rank) B A", 16.0)
    dropout: float = doc("dropout on the adapters' inputs", 0.0)
    targets: tuple[str, ...] | None = doc(
        "Linear layers that get adapters: names or 're:regex'; null = every Linear layer but "
        "the output head",
        None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "model.lora")
        _require(self.rank >= 1, f"model.lora.rank must be >= 1, got {self.rank}")
        _require(self.alpha > 0, f"model.lora.alpha must be > 0, got {self.alpha}")
        _require(
            0.0 <= self.dropout < 1.0, f"model.lora.dropout must be in [0, 1), got {self.dropout}"
        )
        _require(
            self.targets is None or len(self.targets) >= 1,
            "model.lora.targets must name at least one layer, or be null (every Linear layer "
            "but the output head)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """A network: registry name (or ``package.module:builder``), its arguments, its weights."""

    arch: str | None = doc(
        "model name from the registry (see `kdistill models`) or an import path "
        "'package.module:builder'; may be null for a teacher whose checkpoint names it",
        None,
    )
    args: dict[str, Any] = doc(
        "keyword arguments of the model builder, e.g. {hidden: [800, 800], dropout: 0.2}",
        factory=dict,
    )
    checkpoint: str | None = doc(
        "weights to start from: a kdistill .safetensors file or a run directory (its final "
        "model.safetensors); null = random initialization",
        None,
    )
    input_mean: tuple[float, ...] | None = doc(
        "a teacher trained elsewhere (plain weights, timm, Hugging Face): the per-channel mean "
        "(of pixels in [0, 1]) its inputs were standardized with; the student's inputs are "
        "renormalized for it. null = the student's normalization (a kdistill model file "
        "records its own)",
        None,
    )
    input_std: tuple[float, ...] | None = doc(
        "with input_mean: the per-channel standard deviation", None
    )
    input_size: int | None = doc(
        "a teacher trained elsewhere: the image side it takes (e.g. 224); the student's images "
        "are resized for it (bilinear, antialiased). null = the student's size",
        None,
    )
    init_from_teacher: bool = doc(
        "a language-model student starts as its teacher cut down (DistilBERT's initialization): "
        "the teacher's widths, embedding, final norm, head and evenly spaced layers (every "
        "other one at half the depth); args may set only layers (default: half the teacher's). "
        "Teachers: kdistill GPTs and Llama-architecture Hugging Face / GGUF models (SmolLM2)",
        False,
    )
    teacher_layers: list[int] | None = doc(
        "with init_from_teacher: which of the teacher's layers the student starts from, in "
        "order (e.g. [0, 29]: its first and last, the two kdistill prune finds most important "
        "in SmolLM2); their number is the student's depth. null = evenly spaced",
        None,
    )
    lora: LoraConfig | None = doc(
        "a language-model student trains low-rank adapters on its Linear layers instead of "
        "all its weights (pip install 'kdistill[lora]'); null = every weight trains",
        None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "model")
        _require(
            self.arch is not None or self.checkpoint is not None,
            "a model needs an arch (e.g. arch: lenet5) or a checkpoint that records one",
        )
        _require(self.arch != "", "model arch must be a name or null, got an empty string")
        _require(
            (self.input_mean is None) == (self.input_std is None),
            "input_mean and input_std go together: give both (one value per channel) or neither",
        )
        if self.input_mean is not None and self.input_std is not None:
            _require(
                len(self.input_mean) == len(self.input_std) >= 1,
                f"input_mean {list(self.input_mean)} and input_std {list(self.input_std)} need "
                "one value per channel each",
            )
            _require(
                all(math.isfinite(s) and s > 0 for s in self.input_std),
                f"input_std must be > 0 for every channel, got {list(self.input_std)}",
            )
        _require(
            self.input_size is None or self.input_size >= 1,
            f"input_size must be >= 1 pixels or null, got {self.input_size}",
        )

    @property
    def describes_input(self) -> bool:
        """Whether the config says what inputs this (foreign) teacher expects."""
        return self.input_mean is not None or self.input_size is not None


@dataclass(frozen=True)
class TeacherCacheConfig:
    """Precomputed teacher outputs: the teacher runs once, every later epoch and run reads them."""

    enabled: bool = doc(
        "read the teacher's outputs from a cache instead of running the teacher (built on first use)",
        False,
    )
    dir: str | None = doc(
        "cache directory; null = <out_dir>/teacher-cache/<fingerprint>, shared by every run "
        "with the same teacher, data, preprocessing and views",
        None,
    )
    views: int | None = doc(
        "augmentation views stored per training sample; null = every view the augmentation can "
        "produce (crop offsets x flips)",
        None,
    )
    dtype: CacheDtype = doc("storage precision of the cached outputs", "float16")
    topk: int | None = doc(
        "store only the k largest probabilities at kd.temperature plus the remaining mass "
        "(spread evenly over the other classes when read); null = all logits (any temperature)",
        None,
    )
    on_mismatch: CacheMismatch = doc(
        "when kd.teacher_cache.dir holds outputs of another teacher, data or setting: rebuild it, "
        "or stop with an error",
        "rebuild",
    )

    def __post_init__(self) -> None:
        check_fields(self, "kd.teacher_cache")
        _require(
            self.views is None or self.views >= 1,
            f"kd.teacher_cache.views must be >= 1 or null, got {self.views}",
        )
        _require(
            self.topk is None or self.topk >= 1,
            f"kd.teacher_cache.topk must be >= 1 or null, got {self.topk}",
        )


@dataclass(frozen=True)
class FeaturePair:
    """A student layer matched with a teacher layer, by module path (``model.named_modules()``)."""

    student: str = doc("the student's layer, e.g. layer3 or features.3", "")
    teacher: str = doc("the teacher's layer", "")

    def __post_init__(self) -> None:
        check_fields(self, "kd.features[]")
        _require(
            isinstance(self.student, str) and bool(self.student) and isinstance(self.teacher, str)
            and bool(self.teacher),
            f"a feature pair names a student and a teacher layer, e.g. {{student: layer3, "
            f"teacher: layer3}}; got student={self.student!r}, teacher={self.teacher!r}",
        )  # fmt: skip


@dataclass(frozen=True)
class MethodConfig:
    """One distillation method of ``kd.methods`` (``kdistill methods`` lists them)."""

    name: str = doc("the method: " + ", ".join(METHODS), "kd")
    weight: float | None = doc("weight of its loss term; null = the method's default", None)
    pairs: tuple[FeaturePair, ...] = doc("layer pairs of a feature method; empty = kd.features", ())
    args: dict[str, Any] = doc(
        "the method's own settings (kdistill methods lists them)", factory=dict
    )

    def __post_init__(self) -> None:
        check_fields(self, "kd.methods[]")
        info = method_info(self.name)
        where = f"kd.methods[{self.name}]"
        _require(
            self.weight is None
            or (is_number(self.weight) and math.isfinite(self.weight) and self.weight >= 0),
            f"{where}.weight must be a finite number >= 0 or null, got {self.weight!r}",
        )
        method_args(info, dict(self.args), f"{where}.args")
        _require(
            info.needs_features or not self.pairs,
            f"{where}: {self.name} reads logits only; it takes no pairs",
        )

    @property
    def settings(self) -> dict[str, Any]:
        """The method's settings, defaults filled in."""
        return method_args(method_info(self.name), dict(self.args), f"kd.methods[{self.name}].args")


@dataclass(frozen=True)
class SequenceLevelConfig:
    """Sequence-level distillation (Kim and Rush 2016): the student trains on the teacher's own
    completions of prompts from the training text instead of the text itself."""

    max_new_tokens: int = doc("tokens the teacher generates per prompt (at most)", 64)
    temperature: float = doc("sampling temperature; 0 = greedy", 0.0)
    top_p: float = doc("nucleus sampling: the smallest set of tokens with this probability", 1.0)
    seed: int = doc("seed of the sampling (each chunk of prompts from its own)", 0)
    batch_size: int = doc("prompts the teacher completes at once", 8)

    def __post_init__(self) -> None:
        check_fields(self, "kd.sequence_level")
        _require(
            self.max_new_tokens >= 1,
            f"kd.sequence_level.max_new_tokens must be >= 1, got {self.max_new_tokens}",
        )
        _require(
            self.temperature >= 0 and math.isfinite(self.temperature),
            f"kd.sequence_level.temperature must be >= 0 (0 = greedy), got {self.temperature}",
        )
        _require(
            0.0 < self.top_p <= 1.0, f"kd.sequence_level.top_p must be in (0, 1], got {self.top_p}"
        )
        _require(
            self.batch_size >= 1,
            f"kd.sequence_level.batch_size must be >= 1, got {self.batch_size}",
        )


@dataclass(frozen=True)
class OnPolicyConfig:
    """On-policy distillation (GKD, Agarwal et al. 2024): with probability ``lmbda`` a training
    batch is the student's own completions of prompts from the training text, scored by the
    teacher."""

    lmbda: float = doc(
        "the probability that a batch is the student's own completions (GKD's lambda): 0 = "
        "the dataset's completions only, 1 = the student's only",
        0.5,
    )
    max_new_tokens: int = doc("tokens the student generates per prompt (at most)", 64)
    temperature: float = doc("the student's sampling temperature; 0 = greedy", 1.0)
    top_p: float = doc("nucleus sampling: the smallest set of tokens with this probability", 1.0)

    def __post_init__(self) -> None:
        check_fields(self, "kd.on_policy")
        _require(
            0.0 <= self.lmbda <= 1.0, f"kd.on_policy.lmbda must be in [0, 1], got {self.lmbda}"
        )
        _require(
            self.max_new_tokens >= 1,
            f"kd.on_policy.max_new_tokens must be >= 1, got {self.max_new_tokens}",
        )
        _require(
            self.temperature >= 0 and math.isfinite(self.temperature),
            f"kd.on_policy.temperature must be >= 0 (0 = greedy), got {self.temperature}",
        )
        _require(0.0 < self.top_p <= 1.0, f"kd.on_policy.top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation: teacher(s), temperature and loss weights."""

    teachers: tuple[ModelConfig, ...] = doc(
        "the teacher, or several for an ensemble; each needs a checkpoint unless trained jointly",
        (),
    )
    temperature: float = doc("distillation temperature T (useful range 1..20)", 4.0)
    alpha: float = doc("weight of the student loss (cross-entropy with hard labels, T=1)", 0.1)
    beta: float | None = doc(
        "weight of the distillation loss; null = 1 - alpha (Hinton's weighted average)", None
    )
    teacher_weight: float = doc(
        "weight of the teacher's own hard-label loss; > 0 trains the teacher jointly "
        "(Distiller's --kd-tw)",
        0.0,
    )
    start_epoch: int = doc(
        "epoch (0-based) at which distillation starts; before it the student trains on labels only",
        0,
    )
    scale_by_t2: bool = doc(
        "multiply the distillation term by T^2 so its gradient scale does not change with T", True
    )
    ensemble_reduce: EnsembleReduce = doc(
        "how ensemble members combine: average probabilities at T (probs) or logits", "probs"
    )
    ensemble_weights: tuple[float, ...] | None = doc(
        "one weight per teacher (normalized); null = equal weights", None
    )
    bn_policy: BatchNormPolicy = doc(
        "teacher BatchNorm: frozen running statistics, or batch statistics (never updated)",
        "frozen",
    )
    teacher_precision: TeacherPrecision = doc(
        "precision of the frozen teacher's forward pass (outputs are returned as float32); auto: "
        "bf16 where the CPU or GPU computes it natively and a short probe finds it faster, else "
        "fp32 (the choice and its reason are in the run record)",
        "auto",
    )
    teacher_channels_last: bool = doc(
        "run the frozen teacher in channels-last memory format (helps some CNNs on some hardware)",
        False,
    )
    teacher_cache: TeacherCacheConfig = doc(
        "precomputed teacher outputs", factory=TeacherCacheConfig
    )
    methods: tuple[MethodConfig, ...] = doc(
        "distillation methods and their weights, e.g. [{name: kd}, {name: at, pairs: [...]}]; "
        "empty = Hinton's soft targets alone (kd.beta). With methods, kd.alpha weighs the labels' "
        "cross-entropy and only the listed methods run",
        (),
    )
    features: tuple[FeaturePair, ...] = doc(
        "layer pairs for the feature methods that list none of their own", ()
    )
    standardize: bool = doc(
        "standardize student and teacher logits before Hinton's term (Sun et al. 2024)", False
    )
    min_teacher_top1: float | None = doc(
        "refuse to distill from a teacher whose test top-1 (in [0, 1]) is below this; "
        "null = twice chance level (catches an untrained or wrong teacher)",
        None,
    )
    token_loss: DivergenceKind = doc(
        "language models: the token-level divergence between the teacher's and the student's "
        "next-token distributions at T (forward_kl, reverse_kl, jsd, skew_forward_kl, "
        "skew_reverse_kl, tvd); a top-k teacher cache gives forward_kl only",
        "forward_kl",
    )
    jsd_beta: float = doc(
        "language models, token_loss=jsd: the mixture weight of GKD's generalized JSD, in (0, 1)",
        0.5,
    )
    skew: float = doc("language models, skewed KLs: DistiLLM's skew a in [0, 1)", 0.1)
    sequence_level: SequenceLevelConfig | None = doc(
        "language models: train on the teacher's completions of prompts from the training "
        "text (the first sentence of each paragraph) instead of the text itself, with the "
        "losses above over the completions' tokens; the completions are generated once into "
        "<out_dir>/generations/ and reused by every run with the same teacher, prompts and "
        "settings. null = the text itself",
        None,
    )
    on_policy: OnPolicyConfig | None = doc(
        "language models: on-policy distillation (GKD). The training text becomes prompts "
        "(each paragraph's first sentence) with their completions (the rest of the paragraph, "
        "or the teacher's with sequence_level); with probability lmbda a batch is instead the "
        "student's own completions of prompts, on which the student learns the divergence "
        "alone (their tokens are its own, not labels). Needs the teacher online. null = off",
        None,
    )

    cross_tokenizer: CrossTokenizerMethod | None = doc(
        "language models: a teacher whose tokenizer is not the student's (e.g. data.tokenizer: "
        "bpe:8192 under SmolLM2): the teacher reads its own tokenization of each block and is "
        "compared with the student where both tokenizations end at the same byte. 'spans': the "
        "teacher's probabilities moved onto the student tokens that spell the same bytes, then "
        "token_loss; 'uld': the two sorted distributions' L1 distance (Boizard et al. 2024). "
        "Needs the teacher online and byte-level tokenizers. null = one shared tokenizer",
        None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "kd")
        _require(
            len(self.teachers) >= 1,
            "kd needs at least one teacher: kd.teachers: [{checkpoint: path/to/teacher.safetensors}] "
            "(or --kd-teacher ARCH --kd-resume PATH)",
        )
        check_temperature(self.temperature, "kd.temperature")
        resolve_weights(self.alpha, self.beta, self.teacher_weight, prefix="kd.")
        _require(self.start_epoch >= 0, f"kd.start_epoch must be >= 0, got {self.start_epoch}")
        normalized_weights(self.ensemble_weights, len(self.teachers), "kd.ensemble_weights")
        if self.teacher_weight > 0:
            _require(
                not self.teacher_cache.enabled,
                f"kd.teacher_cache cannot be used with joint teacher training (kd.teacher_weight="
                f"{self.teacher_weight}): the teacher changes every step",
            )
            _require(
                len(self.teachers) == 1,
                f"joint teacher training (kd.teacher_weight={self.teacher_weight}) needs exactly one "
                f"teacher, got {len(self.teachers)}",
            )
        else:
            for i, teacher in enumerate(self.teachers):
                _require(
                    teacher.checkpoint is not None,
                    f"kd.teachers[{i}] has no checkpoint: distilling from an untrained teacher "
                    "teaches nothing. Train it first (kdistill train ...) and set its checkpoint, "
                    "or set kd.teacher_weight > 0 to train it jointly",
                )
        self._check_methods()
        _require(0.0 < self.jsd_beta < 1.0, f"kd.jsd_beta must be in (0, 1), got {self.jsd_beta}")
        _require(0.0 <= self.skew < 1.0, f"kd.skew must be in [0, 1), got {self.skew}")
        if self.min_teacher_top1 is not None:
            _require(
                0.0 <= self.min_teacher_top1 <= 1.0,
                f"kd.min_teacher_top1 must be in [0, 1] or null, got {self.min_teacher_top1}",
            )

    def _check_methods(self) -> None:
        names = [m.name for m in self.methods]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, f"kd.methods lists {', '.join(duplicates)} more than once")
        feature_methods = [m.name for m in self.methods if method_info(m.name).needs_features]
        for m in self.methods:
            info = method_info(m.name)
            pairs = m.pairs or self.features
            _require(
                not info.needs_features or bool(pairs),
                f"kd.methods[{m.name}] reads layers: give pairs: [{{student: LAYER, teacher: "
                "LAYER}] (or kd.features); kdistill says which layers exist if a name is wrong",
            )
            _require(
                info.pairs != "one" or len(pairs) == 1,
                f"kd.methods[{m.name}] takes exactly one layer pair, got {len(pairs)}",
            )
        if not (self.methods or self.standardize):
            return
        _require(
            self.beta is None or not self.methods or "kd" in names,
            f"kd.beta={self.beta} weighs Hinton's term, which kd.methods ({', '.join(names)}) does "
            "not list: add {name: kd} to kd.methods, or set kd.beta=null (a recipe may set it)",
        )
        _require(
            self.teacher_weight == 0,
            f"kd.methods / kd.standardize do not combine with joint teacher training "
            f"(kd.teacher_weight={self.teacher_weight})",
        )
        if feature_methods:
            _require(
                not self.teacher_cache.enabled,
                f"{', '.join(feature_methods)} read the teacher's layers, so the teacher runs "
                "online: set kd.teacher_cache.enabled=false (logit methods can use the cache)",
            )
            _require(
                len(self.teachers) == 1,
                f"{', '.join(feature_methods)} read one teacher's layers; kd.teachers has "
                f"{len(self.teachers)} (logit methods work with ensembles)",
            )
        uses_standardize = self.standardize or any(
            m.name == "dkd" and m.settings["standardize"] for m in self.methods
        )
        _require(
            not (uses_standardize and self.teacher_cache.enabled and self.teacher_cache.topk),
            "logit standardization needs the teacher's logits, but a top-k teacher cache stores "
            "probabilities: set kd.teacher_cache.topk=null",
        )

    @property
    def resolved_beta(self) -> float:
        return resolve_weights(self.alpha, self.beta, self.teacher_weight)[1]


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer."""

    name: OptimizerName = doc("sgd or adamw", "sgd")
    lr: float = doc("peak learning rate", 0.05)
    momentum: float = doc("SGD momentum", 0.9)
    nesterov: bool = doc("SGD Nesterov momentum", True)
    weight_decay: float = doc("weight decay (decoupled for adamw)", 5e-4)
    betas: tuple[float, float] = doc("AdamW betas", (0.9, 0.999))
    grad_clip: float | None = doc(
        "clip the gradient's global L2 norm to this; null = no clipping", None
    )

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        _positive("optim.lr", self.lr)
        _require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _require(
            self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}"
        )
        _require(
            all(0 <= b < 1 for b in self.betas), f"optim.betas must be in [0, 1), got {self.betas}"
        )
        if self.grad_clip is not None:
            _positive("optim.grad_clip", self.grad_clip)
        _require(
            not (self.nesterov and self.name == "sgd" and self.momentum == 0),
            "optim.nesterov needs optim.momentum > 0 (set nesterov: false for plain SGD)",
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule, evaluated per step."""

    name: ScheduleName = doc("cosine, multistep, exponential, onecycle or constant", "cosine")
    warmup_epochs: float = doc("linear warm-up from 0 over this many epochs (not onecycle)", 0.0)
    min_lr_ratio: float = doc("cosine: final lr as a fraction of the peak lr", 0.0)
    milestones: tuple[int, ...] = doc("multistep: epochs at which lr is multiplied by gamma", ())
    gamma: float = doc(
        "multistep: the factor applied at each milestone; exponential: the factor applied "
        "every epoch (lr = lr0 * gamma^epoch)",
        0.1,
    )
    gammas: tuple[float, ...] = doc(
        "multistep: one factor per milestone (Distiller's MultiStepMultiGammaLR); empty = gamma "
        "at each",
        (),
    )
    pct_start: float = doc("onecycle: fraction of training spent increasing the lr", 0.3)
    div_factor: float = doc("onecycle: initial lr = lr / div_factor", 25.0)
    final_div_factor: float = doc("onecycle: final lr = initial lr / final_div_factor", 1e4)

    def __post_init__(self) -> None:
        check_fields(self, "schedule")
        _require(
            self.warmup_epochs >= 0,
            f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}",
        )
        _require(
            0 <= self.min_lr_ratio <= 1,
            f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}",
        )
        _require(
            list(self.milestones) == sorted(set(self.milestones))
            and all(m > 0 for m in self.milestones),
            f"schedule.milestones must be increasing positive epochs, got {list(self.milestones)}",
        )
        _positive("schedule.gamma", self.gamma)
        _require(
            0 < self.pct_start < 1, f"schedule.pct_start must be in (0, 1), got {self.pct_start}"
        )
        _positive("schedule.div_factor", self.div_factor)
        _positive("schedule.final_div_factor", self.final_div_factor)
        _require(
            self.name != "multistep" or len(self.milestones) > 0,
            "schedule.name=multistep needs schedule.milestones, e.g. [30, 60]",
        )
        _require(
            not self.gammas or len(self.gammas) == len(self.milestones),
            f"schedule.gammas has {len(self.gammas)} factors for {len(self.milestones)} "
            "milestones; give one per milestone (or none, for gamma at each)",
        )
        for g in self.gammas:
            _positive("schedule.gammas[]", g)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    epochs: int = doc("number of epochs", 10)
    seed: int = doc("seed of initialization, data order, augmentation and dropout", 0)
    device: str = doc("auto (cuda if available, else cpu), cpu, cuda or cuda:N", "auto")
    precision: Precision = doc("fp32, or bf16 autocast for the forward passes", "fp32")
    deterministic: bool = doc(
        "deterministic algorithms (bit-identical resume on CPU; slower on GPU)", False
    )
    threads: int | None = doc("CPU threads for PyTorch; null = PyTorch's default", None)
    grad_accumulation: int = doc("optimizer step every N batches", 1)
    logit_chunk_tokens: int | None = doc(
        "language models: tokens per chunk of the chunked head and loss (the student's full "
        "logits are never built when they take more than one chunk); null = about 32 MiB of "
        "float32 logits per chunk (2^23 / vocab tokens, at least 64)",
        None,
    )
    keep_checkpoints: int = doc(
        "how many epoch checkpoints to keep (the best weights are kept too)", 2
    )
    tensorboard: bool = doc("write TensorBoard event files into the run directory", True)
    measure_latency: bool = doc(
        "time the final model's CPU inference at batch 1 and 128 for the summary", True
    )
    on_collapse: CollapseAction = doc(
        "when the student collapses after an epoch (test top-1 at or below chance, or one class "
        "predicted for most inputs, while it gives one answer for all inputs or is confidently "
        "wrong): stop (the last good checkpoint is kept; stopped.json says why), warn or ignore; "
        "one still at chance after the last epoch without those signs is a warning",
        "stop",
    )
    sync_batchnorm: bool = doc(
        "with several processes, compute the student's BatchNorm statistics over the global batch",
        False,
    )
    parallel: ParallelKind = doc(
        "with several processes: 'ddp' (every process holds the whole student, gradients are "
        "averaged) or 'fsdp' (language models: FSDP2's fully_shard on each of the student's "
        "blocks and on the rest, so each process holds a shard of its weights, gradients and "
        "optimizer state; checkpoints and model files hold the whole weights)",
        "ddp",
    )
    shard_teacher: bool = doc(
        "with train.parallel=fsdp and several processes, shard the frozen teacher's blocks "
        "too (each process keeps a shard; its weights are gathered block by block in its "
        "forward); false = every process holds the whole teacher",
        False,
    )
    dist_timeout_s: float = doc(
        "with several processes, how long one waits for the others before the run stops "
        "(a process that died makes the rest stop within this time)",
        300.0,
    )
    callbacks: tuple[str, ...] = doc(
        "extra trainer callbacks, as import paths 'package.module:Name' of zero-argument classes "
        "or factories (see kdistill.engine.Callback)",
        (),
    )

    def __post_init__(self) -> None:
        check_fields(self, "train")
        _require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _require(0 <= self.seed < 2**63, f"train.seed must be an integer >= 0, got {self.seed}")
        _require(
            self.device == "auto"
            or self.device == "cpu"
            or self.device == "cuda"
            or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        _require(
            self.threads is None or self.threads >= 1,
            f"train.threads must be >= 1 or null, got {self.threads}",
        )
        _require(
            self.grad_accumulation >= 1,
            f"train.grad_accumulation must be >= 1, got {self.grad_accumulation}",
        )
        _require(
            self.logit_chunk_tokens is None or self.logit_chunk_tokens >= 1,
            f"train.logit_chunk_tokens must be >= 1 tokens or null, got {self.logit_chunk_tokens}",
        )
        _require(
            self.keep_checkpoints >= 1,
            f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
        )
        _positive("train.dist_timeout_s", self.dist_timeout_s)
        for path in self.callbacks:
            _require(
                ":" in path,
                f"train.callbacks entries must look like 'package.module:Name', got {path!r}",
            )


@dataclass(frozen=True)
class RunConfig:
    """One experiment: data, student, optional distillation, optimizer, schedule, loop."""

    name: str = doc(
        "run name; a run writes to out_dir/NAME-HASH/seed-SEED (HASH: of the config) and "
        "out_dir/NAME links to the run of the recipe as written",
        "run",
    )
    out_dir: str = doc("where run directories are created", "runs")
    data: DataConfig = doc("the data", factory=DataConfig)
    model: ModelConfig = doc(
        "the model being trained (the student, or the teacher when training one)",
        factory=lambda: ModelConfig(arch="mlp"),
    )
    kd: KDConfig | None = doc("distillation; null = plain supervised training", None)
    optim: OptimConfig = doc("the optimizer", factory=OptimConfig)
    schedule: ScheduleConfig = doc("the learning-rate schedule", factory=ScheduleConfig)
    train: TrainConfig = doc("the training loop", factory=TrainConfig)
    policies: tuple[PolicyConfig, ...] = doc(
        "the compression schedule: a list of policies, each with a kind (distillation, "
        "quantization, pruning, channel_pruning, regularization) and its epochs",
        (),
    )

    def user_code(self) -> tuple[str, ...]:
        """The import paths written in this config (architectures, callbacks): code the user
        asked to run, which a model file may therefore name too (see :mod:`kdistill.trust`)."""
        archs = (
            [self.model.arch, *(t.arch for t in self.kd.teachers)] if self.kd else [self.model.arch]
        )
        return tuple(a for a in archs if a is not None and ":" in a) + self.train.callbacks

    def policy(self, kind: str) -> PolicyConfig | None:
        """The policy of ``kind`` (at most one of each, regularization aside), or ``None``."""
        return next((p for p in self.policies if p.kind == kind), None)

    @property
    def final_form_epoch(self) -> int:
        """The first epoch at whose end the student has its final form: every compression
        policy has taken its last step (pruned to its target, thinned, cut, quantized), capped
        at the run's last epoch; 0 without compression. Only from here may an epoch be chosen
        as the run's best: an earlier one is a model that is not the one asked for (dense, or
        wider, or not quantized), however well it scores."""
        last = self.train.epochs - 1
        steps = [0]
        for p in self.policies:
            if p.kind in ("quantization", "lm_quantization"):
                steps.append(p.starting_epoch)
            elif p.kind == "pruning":
                steps.append(last if p.last_step is None else p.last_step)
                steps.append(p.remove_epoch or 0)
            elif p.kind in ("channel_pruning", "lm_pruning"):
                steps.append(p.last_step)
            elif p.kind == "thinning":
                steps.append(p.epochs[-1])
        return min(max(steps), last)

    @property
    def kd_window(self) -> EpochWindow:
        """The epochs with the distillation loss: the distillation policy's, else from
        ``kd.start_epoch`` to the end."""
        policy = self.policy("distillation")
        if policy is not None:
            return policy.window
        return EpochWindow(self.kd.start_epoch if self.kd is not None else 0)

    def __post_init__(self) -> None:
        check_fields(self, "")
        _require(
            not self.model.describes_input,
            "model.input_mean / input_std / input_size say what a teacher trained elsewhere "
            "expects; they apply to kd.teachers[i], not to the model being trained",
        )
        if self.model.init_from_teacher:
            _require(
                self.data.is_text and self.kd is not None and self.model.checkpoint is None,
                "model.init_from_teacher starts a language-model student from its teacher's "
                "layers: it needs a text dataset, the kd section (the teacher) and no "
                "model.checkpoint",
            )
        _require(
            self.model.teacher_layers is None or self.model.init_from_teacher,
            "model.teacher_layers chooses the teacher's layers a student starts from: it needs "
            "model.init_from_teacher: true",
        )
        if self.kd is not None and self.kd.sequence_level is not None:
            _require(
                self.data.is_text,
                "kd.sequence_level trains a language model on its teacher's completions: it "
                "needs a text dataset (data.name: pydocs or text)",
            )
        if self.kd is not None and self.kd.on_policy is not None:
            _require(
                self.data.is_text,
                "kd.on_policy distils a language model on its own samples: it needs a text "
                "dataset (data.name: pydocs or text)",
            )
            _require(
                not self.kd.teacher_cache.enabled or self.kd.on_policy.lmbda == 0,
                "kd.on_policy: the teacher scores the student's new samples, which no cache "
                "holds: set kd.teacher_cache.enabled=false (or lmbda: 0)",
            )
        if self.kd is not None and self.kd.cross_tokenizer is not None:
            self._check_cross_tokenizer(self.kd)
        if self.train.parallel == "fsdp" or self.train.shard_teacher:
            self._check_fsdp()
        if self.model.lora is not None:
            _require(
                self.data.is_text,
                "model.lora trains low-rank adapters of a language-model student: it needs a "
                "text dataset (data.name: pydocs or text)",
            )
            _require(
                not self.policies,
                "model.lora with compression policies ("
                + ", ".join(p.kind for p in self.policies)
                + "): adapters over pruned or fake-quantized layers are not supported; remove "
                "one of them",
            )
        if self.kd is not None:
            _require(
                not any(t.lora is not None for t in self.kd.teachers),
                "kd.teachers[].lora: only the student (model) trains adapters",
            )
            _require(
                not any(t.init_from_teacher or t.teacher_layers for t in self.kd.teachers),
                "kd.teachers[].init_from_teacher / teacher_layers: only the student (model) "
                "starts from a teacher",
            )
        _require(
            bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name),
            f"name must be non-empty and use letters, digits, '-', '_' or '.', got {self.name!r}",
        )
        if self.kd is not None:
            _require(
                self.kd.start_epoch < self.train.epochs,
                f"kd.start_epoch={self.kd.start_epoch} is not before train.epochs={self.train.epochs}: "
                "distillation would never run",
            )
        for m in self.schedule.milestones:
            _require(
                m < self.train.epochs,
                f"schedule.milestones has {m}, which is not before train.epochs={self.train.epochs}",
            )
        kinds = [p.kind for p in self.policies]
        for kind in set(kinds):
            _require(
                kinds.count(kind) == 1 or kind in ("regularization", "pruning", "thinning"),
                f"policies: {kinds.count(kind)} {kind} policies; give at most one (pruning, "
                "regularization and thinning may repeat)",
            )
        for p in self.policies:
            _require(
                p.starting_epoch < self.train.epochs,
                f"policies: the {p.kind} policy starts at epoch {p.starting_epoch}, not before "
                f"train.epochs={self.train.epochs}",
            )
            end = getattr(p, "ending_epoch", None)
            cut_off = isinstance(p, PruningPolicy) and p.schedule == "agp"  # Distiller's way
            _require(
                end is None or end <= self.train.epochs or cut_off,
                f"policies: the {p.kind} policy ends at epoch {end}, after train.epochs={self.train.epochs}",
            )
            if isinstance(p, ThinningPolicy):
                _require(
                    p.epochs[-1] < self.train.epochs,
                    f"policies: the thinning policy's epoch {p.epochs[-1]} is not before "
                    f"train.epochs={self.train.epochs}",
                )
        _require(
            "distillation" not in kinds or self.kd is not None,
            "policies: a distillation policy needs the kd section (teacher, temperature, weights)",
        )
        for kind in kinds:
            for_text = kind in LANGUAGE_MODEL_POLICIES
            _require(
                for_text == self.data.is_text,
                f"policies: {kind} is a policy of "
                + ("language models (data.name: pydocs or text)" if for_text else "image models")
                + ("; a language model takes "
                   + " and ".join(LANGUAGE_MODEL_POLICIES) if self.data.is_text
                   else "; an image model takes the others"),
            )  # fmt: skip
        pruning_lm, quantizing_lm = self.policy("lm_pruning"), self.policy("lm_quantization")
        if isinstance(pruning_lm, LanguageModelPruningPolicy) and quantizing_lm is not None:
            _require(
                pruning_lm.last_step <= quantizing_lm.starting_epoch,
                f"policies: lm_pruning's last step (epoch {pruning_lm.last_step}) must not come "
                f"after lm_quantization starts (epoch {quantizing_lm.starting_epoch}): structure "
                "first, then quantization",
            )
        if "distillation" in kinds:
            _require(
                self.kd is not None and self.kd.start_epoch == 0,
                "kd.start_epoch and a distillation policy both set when distillation starts; use the "
                "policy's starting_epoch",
            )
        q, c = self.policy("quantization"), self.policy("channel_pruning")
        for p in self.policies:
            remove = (
                p.epochs[-1] if isinstance(p, ThinningPolicy) else getattr(p, "remove_epoch", None)
            )
            if remove is None:
                continue
            _require(
                remove < self.train.epochs,
                f"policies: the {p.kind} policy removes filters at epoch {remove}, not before "
                f"train.epochs={self.train.epochs}",
            )
            _require(
                not isinstance(q, QuantizationPolicy) or remove <= q.starting_epoch,
                f"policies: the {p.kind} policy removes filters at epoch {remove}, after quantization "
                f"starts (epoch {q.starting_epoch if q else ''}): structure first, then QAT",
            )
        if isinstance(q, QuantizationPolicy) and isinstance(c, ChannelPruningPolicy):
            _require(
                c.last_step < q.starting_epoch,
                f"policies: channel pruning (last step at epoch {c.last_step}) must finish before "
                f"quantization starts (epoch {q.starting_epoch}): structure first, then QAT",
            )

    def _check_cross_tokenizer(self, kd: KDConfig) -> None:
        what = f"kd.cross_tokenizer={kd.cross_tokenizer}"
        _require(self.data.is_text, f"{what} is for language models (data.name: pydocs or text)")
        _require(
            not kd.teacher_cache.enabled,
            f"{what}: the teacher reads its own tokens of each block, which the token cache "
            "does not hold: set kd.teacher_cache.enabled=false",
        )
        _require(
            kd.sequence_level is None and kd.on_policy is None,
            f"{what} distils on the text itself: kd.sequence_level and kd.on_policy generate "
            "with one tokenizer; drop them",
        )
        _require(
            not (kd.cross_tokenizer == "spans" and kd.token_loss == "reverse_kl"),
            f"{what} with kd.token_loss=reverse_kl: the teacher's distribution moved onto the "
            "student's vocabulary is zero on student tokens no teacher token starts with, so its "
            "reverse KL is infinite; choose forward_kl, jsd, skew_forward_kl, skew_reverse_kl or "
            "tvd",
        )
        _require(
            not self.model.init_from_teacher,
            f"{what}: model.init_from_teacher copies the teacher's embedding, which is over "
            "another vocabulary",
        )

    def _check_fsdp(self) -> None:
        _require(
            self.train.parallel == "fsdp",
            "train.shard_teacher shards the teacher with FSDP2: it needs train.parallel=fsdp",
        )
        _require(
            self.data.is_text,
            "train.parallel=fsdp shards a language-model student (data.name: pydocs or text); "
            "image runs use ddp",
        )
        _require(
            not self.policies,
            "train.parallel=fsdp with compression policies ("
            + ", ".join(p.kind for p in self.policies)
            + "): a sharded student cannot be pruned or fake-quantized in place; use ddp",
        )
        _require(
            self.model.lora is None,
            "train.parallel=fsdp with model.lora: adapters are trained replicated; use ddp",
        )
        kd = self.kd
        _require(
            kd is None or kd.on_policy is None,
            "train.parallel=fsdp with kd.on_policy: each process samples completions of its own "
            "length, but a sharded student must run the same forwards in every process; use ddp",
        )
        if self.train.shard_teacher:
            _require(kd is not None, "train.shard_teacher needs a teacher (kd)")
            assert kd is not None
            _require(
                not kd.teacher_cache.enabled,
                "train.shard_teacher with kd.teacher_cache: the cache is built by the processes "
                "in shares of their own, which a sharded teacher cannot run; build the cache "
                "with the teacher replicated (train.shard_teacher=false), or run it online",
            )
            _require(
                kd.cross_tokenizer is None and kd.sequence_level is None,
                "train.shard_teacher with kd.cross_tokenizer or kd.sequence_level: the teacher "
                "then reads sequences of its own length in each process; keep it replicated",
            )
