"""Compression policies: *what* each technique does and *when*, as torch-free specs.

The run config composes them (``policies:``, in the spirit of Distiller's schedules) and the
compression package turns each into a trainer callback; neither imports the other's side.
Epoch ranges are ``[starting_epoch, ending_epoch)``, 0-based; a null ``ending_epoch`` means
"until the end of training". This module imports only :mod:`kdistill.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kdistill.validation import QUANT_SETTINGS, EpochWindow, check_fields, doc, require


def _check_range(kind: str, start: int, end: int | None, frequency: int = 1) -> None:
    try:
        EpochWindow(start, end)
    except ValueError as e:
        raise ValueError(f"{kind} policy: {e} (starting_epoch / ending_epoch)") from None
    require(frequency >= 1, f"{kind} policy: frequency must be >= 1 epoch, got {frequency}")


def agp_sparsity(epoch: int, *, initial: float, final: float, start: int, span: int) -> float:
    """Zhu and Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``, clamped to
    ``[t0, t0 + n dt]``; ``span`` is ``n dt`` in epochs (0 = reach ``final`` at once)."""
    if span <= 0:
        return final if epoch >= start else initial
    progress = min(max((epoch - start) / span, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


class _Windowed:
    """The epochs a policy acts in, as the one window type (policies without an
    ``ending_epoch`` act until the end)."""

    @property
    def window(self) -> EpochWindow:
        return EpochWindow(self.starting_epoch, getattr(self, "ending_epoch", None))


@dataclass(frozen=True)
class DistillationPolicy(_Windowed):
    """When the distillation loss is on (teacher, T and weights come from the kd section)."""

    kind: Literal["distillation"] = doc("policy type", "distillation")
    starting_epoch: int = doc("first epoch with the distillation loss", 0)
    ending_epoch: int | None = doc("epoch at which it stops (exclusive); null = the end", None)

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("distillation", self.starting_epoch, self.ending_epoch)


@dataclass(frozen=True)
class QuantizationPolicy(_Windowed):
    """Quantization-aware training from ``starting_epoch`` to the end, then conversion to int8."""

    kind: Literal["quantization"] = doc("policy type", "quantization")
    starting_epoch: int = doc("epoch at which fake quantization is inserted (0 = from scratch)", 0)
    weight_bits: int = doc("bits of weights (2..8)", 8)
    activation_bits: int = doc("bits of activations (2..8)", 8)
    weight_symmetric: bool = doc(
        "symmetric weight quantization (zero maps to zero exactly); must stay true: the int8 "
        "kernels kdistill trains for (torchao's x86 quantizer) take symmetric weights only",
        True,
    )
    activation_symmetric: bool = doc(
        "symmetric (signed) activations; false = asymmetric unsigned, suited to ReLU outputs", False
    )
    weight_per_channel: bool = doc("one scale per output channel (else one per tensor)", True)
    overrides: dict[str, Any] = doc(
        "module name or 're:regex' -> null (stays FP32) or {weight_bits, activation_bits, ...}; "
        "e.g. {features.0: null} keeps the first conv in FP32 (Distiller's DoReFa recipe)",
        factory=dict,
    )
    freeze_epoch: int | None = doc(
        "from this epoch on, observers and BatchNorm statistics stop updating (stabilizes the end "
        "of QAT); null = never",
        None,
    )
    convert: bool = doc(
        "after training, convert to an int8 ONNX model, run it with onnxruntime and report its "
        "accuracy next to the fake-quantized model's",
        True,
    )

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("quantization", self.starting_epoch, None)
        for name, bits in (
            ("weight_bits", self.weight_bits),
            ("activation_bits", self.activation_bits),
        ):
            require(2 <= bits <= 8, f"quantization policy: {name} must be in 2..8, got {bits}")
        asymmetric = [
            key for key, value in self.overrides.items()
            if isinstance(value, dict) and value.get("weight_symmetric") is False
        ]  # fmt: skip
        require(
            self.weight_symmetric and not asymmetric,
            "quantization policy: weight_symmetric=false"
            + (f" (overrides {', '.join(asymmetric)})" if asymmetric else "")
            + ": asymmetric weights are not supported; the int8 kernels kdistill trains for "
            "(torchao's x86 quantizer, converted to ONNX) take symmetric weights. Activations "
            "may be asymmetric (activation_symmetric: false)",
        )
        for key, value in self.overrides.items():
            require(
                value is None or isinstance(value, dict),
                f"quantization policy: overrides[{key!r}] must be null (FP32) or a mapping, got {value!r}",
            )
            if isinstance(value, dict):
                unknown = set(value) - set(QUANT_SETTINGS)
                require(
                    not unknown,
                    f"quantization policy: overrides[{key!r}] has unknown key(s) {sorted(unknown)}; "
                    f"valid: {', '.join(QUANT_SETTINGS)}",
                )
                for bits_key in ("weight_bits", "activation_bits"):
                    if bits_key in value:
                        require(
                            isinstance(value[bits_key], int) and 2 <= value[bits_key] <= 8,
                            f"quantization policy: overrides[{key!r}].{bits_key} must be in 2..8",
                        )
        require(
            self.freeze_epoch is None or self.freeze_epoch > self.starting_epoch,
            f"quantization policy: freeze_epoch ({self.freeze_epoch}) must come after "
            f"starting_epoch ({self.starting_epoch})",
        )


@dataclass(frozen=True)
class PruningPolicy(_Windowed):
    """Unstructured magnitude pruning to a target sparsity, gradual (AGP) or one-shot."""

    kind: Literal["pruning"] = doc("policy type", "pruning")
    target_sparsity: float = doc("fraction of the pruned weights set to zero at the end", 0.5)
    initial_sparsity: float = doc("AGP: sparsity at starting_epoch", 0.0)
    schedule: Literal["agp", "one_shot", "threshold"] = doc(
        "agp: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 (Zhu and Gupta 2017); one_shot: "
        "the target at starting_epoch; threshold: every weight whose magnitude is at most "
        "`threshold`, at starting_epoch and every `frequency` epochs of the window (Distiller's "
        "magnitude and sensitivity pruners; target_sparsity is not used)",
        "agp",
    )
    scope: Literal["global", "per_layer"] = doc(
        "global: one magnitude threshold over all pruned weights; per_layer: each layer to the target",
        "global",
    )
    modules: tuple[str, ...] = doc(
        "module names or 're:regex' whose weights are pruned; empty = every Conv2d and Linear",
        (),
    )
    starting_epoch: int = doc("first pruning step (t0)", 0)
    ending_epoch: int | None = doc(
        "the window is [starting_epoch, ending_epoch): AGP reaches the target in its last "
        "epoch, ending_epoch - 1 (t0 + n dt); null = in the run's last epoch. An AGP window "
        "that ends after the run follows its own curve and is cut off by the run's end (as "
        "Distiller runs a schedule longer than --epochs; the run warns)",
        None,
    )
    frequency: int = doc("epochs between pruning steps (dt)", 1)
    threshold: float | None = doc(
        "schedule threshold: the magnitude at or below which weights are zeroed", None
    )
    threshold_in_std: bool = doc(
        "schedule threshold: the threshold is a multiple of each layer's weight standard "
        "deviation (Distiller's SensitivityPruner) instead of an absolute magnitude",
        False,
    )
    structure: Literal["elements", "filters", "channels"] = doc(
        "what is pruned: single weights, or whole groups ranked by their L1 norm within each "
        "layer: filters (Conv2d output channels; rows, i.e. output neurons, of a Linear) or "
        "channels (Conv2d input channels; columns of a Linear)",
        "elements",
    )
    group_dependency: Literal["independent", "leader"] = doc(
        "structured pruning: each layer ranks its own groups, or the first module's ranking "
        "chooses the groups of all (Distiller's group_dependency: Leader; for layers whose "
        "filters are summed, so the same filters go and can be removed)",
        "independent",
    )
    remove_epoch: int | None = doc(
        "structured pruning: at the start of this epoch the zeroed filters or channels are "
        "removed from the network (torch-pruning), so it really shrinks, as Distiller's "
        "net_thinner does; null = they stay as zeros",
        None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("pruning", self.starting_epoch, self.ending_epoch, self.frequency)
        require(
            0.0 < self.target_sparsity < 1.0,
            f"pruning policy: target_sparsity must be in (0, 1), got {self.target_sparsity}",
        )
        require(
            0.0 <= self.initial_sparsity <= self.target_sparsity,
            f"pruning policy: initial_sparsity must be in [0, target_sparsity], got {self.initial_sparsity}",
        )
        if self.schedule == "threshold":
            require(
                self.threshold is not None and self.threshold > 0,
                f"pruning policy: schedule threshold needs threshold > 0, got {self.threshold}",
            )
            require(
                self.structure == "elements",
                "pruning policy: schedule threshold prunes single weights (structure: elements)",
            )
        else:
            require(
                self.threshold is None and not self.threshold_in_std,
                f"pruning policy: threshold applies to schedule threshold, not {self.schedule}",
            )
        require(
            self.structure == "elements" or self.scope == "per_layer",
            f"pruning policy: structure={self.structure} ranks groups within each layer; set "
            "scope: per_layer",
        )
        require(
            self.group_dependency == "independent" or self.structure != "elements",
            "pruning policy: group_dependency leader shares a ranking of filters or channels; "
            "it needs structure: filters or channels",
        )
        if self.remove_epoch is not None:
            require(
                self.structure != "elements",
                "pruning policy: remove_epoch removes zeroed filters or channels; it needs "
                "structure: filters or channels (single zeroed weights cannot be removed)",
            )
            last_step = self.last_step
            require(
                last_step is not None and self.remove_epoch >= last_step,
                f"pruning policy: remove_epoch={self.remove_epoch} comes before the last pruning "
                f"step (epoch {last_step if last_step is not None else 'the last'}); remove the "
                "filters once pruning is done (set ending_epoch, then remove_epoch >= "
                "ending_epoch - 1)",
            )

    @property
    def last_step(self) -> int | None:
        """The epoch of the last pruning step, where known without the run's length."""
        if self.schedule == "one_shot":
            return self.starting_epoch
        return None if self.ending_epoch is None else self.ending_epoch - 1


@dataclass(frozen=True)
class ChannelPruningPolicy(_Windowed):
    """Structured pruning that removes whole channels (torch-pruning), then training recovers."""

    kind: Literal["channel_pruning"] = doc("policy type", "channel_pruning")
    ratio: float = doc("fraction of channels removed from each prunable layer group", 0.5)
    starting_epoch: int = doc("epoch of the first pruning step", 0)
    iterative_steps: int = doc(
        "reach the ratio in this many steps, one every `frequency` epochs", 1
    )
    frequency: int = doc("epochs between steps", 1)
    ignore: tuple[str, ...] | None = doc(
        "module names never pruned; null = the first and the last layer (input and classes)", None
    )
    round_to: int | None = doc("keep channel counts multiples of this (hardware-friendly)", None)

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("channel_pruning", self.starting_epoch, None, self.frequency)
        require(
            0.0 < self.ratio < 1.0,
            f"channel_pruning policy: ratio must be in (0, 1), got {self.ratio}",
        )
        require(
            self.iterative_steps >= 1,
            f"channel_pruning policy: iterative_steps must be >= 1, got {self.iterative_steps}",
        )

    @property
    def last_step(self) -> int:
        """The epoch of the last pruning step."""
        return self.starting_epoch + (self.iterative_steps - 1) * self.frequency


@dataclass(frozen=True)
class RegularizationPolicy(_Windowed):
    """An L1 or group-lasso penalty on weights, added to the loss in its epochs."""

    kind: Literal["regularization"] = doc("policy type", "regularization")
    type: Literal["l1", "group_lasso"] = doc(
        "l1: sum |w|; group_lasso: sum over output filters/neurons of ||w||_2 (drives whole "
        "channels to zero, preparing channel pruning)",
        "l1",
    )
    weight: float = doc("multiplier of the penalty", 1e-5)
    groups: Literal["filters", "channels"] = doc(
        "group_lasso: the groups, filters (Conv2d output channels; rows of a Linear) or "
        "channels (Conv2d input channels; columns of a Linear)",
        "filters",
    )
    modules: tuple[str, ...] = doc(
        "module names or 're:regex'; empty = every Conv2d and Linear", ()
    )
    starting_epoch: int = doc("first epoch with the penalty", 0)
    ending_epoch: int | None = doc("epoch at which it stops (exclusive); null = the end", None)
    threshold: float | None = doc(
        "after every optimizer step of the window, zero the groups (group_lasso) whose "
        "threshold_criteria is at or below this, or the single weights (l1) whose magnitude is "
        "(Distiller's regularizers with threshold_criteria, whose threshold is the strength); "
        "null = penalty only",
        None,
    )
    threshold_criteria: Literal["mean_abs", "max"] = doc(
        "with threshold: a group's mean absolute weight (Distiller's Mean_Abs) or its largest "
        "absolute weight (Max)",
        "mean_abs",
    )
    keep_mask: bool = doc(
        "with threshold: the groups zeroed by the window's last step stay zero for the rest of "
        "training (Distiller's keep_mask); otherwise they may grow back once the window ends",
        False,
    )

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("regularization", self.starting_epoch, self.ending_epoch)
        require(self.weight > 0, f"regularization policy: weight must be > 0, got {self.weight}")
        require(
            self.type == "group_lasso" or self.groups == "filters",
            f"regularization policy: groups={self.groups} applies to group_lasso, not {self.type}",
        )
        require(
            self.threshold is None or self.threshold > 0,
            f"regularization policy: threshold must be > 0 or null, got {self.threshold}",
        )
        require(
            not self.keep_mask or self.threshold is not None,
            "regularization policy: keep_mask keeps what threshold zeroed; set threshold too",
        )


@dataclass(frozen=True)
class ThinningPolicy:
    """Distiller's network thinning (``FilterRemover`` / ``ChannelRemover``): at the start of
    each listed epoch, after that epoch's pruning steps, the all-zero filters (or input
    channels) of the chosen Conv2d layers are removed from the network with what depends on
    them (the next layer's inputs, BatchNorm), whichever policy zeroed them. Pruning that acts
    later masks the smaller layers."""

    kind: Literal["thinning"] = doc("policy type", "thinning")
    structure: Literal["filters", "channels"] = doc(
        "filters (Conv2d output channels) or channels (Conv2d input channels)", "filters"
    )
    epochs: tuple[int, ...] = doc("the epochs at whose start zeroed groups are removed", (0,))
    modules: tuple[str, ...] = doc(
        "module names or 're:regex' of the Conv2d layers to thin; empty = every Conv2d "
        "(Distiller thins every 4-D weight)",
        (),
    )

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        require(
            bool(self.epochs) and all(e >= 0 for e in self.epochs),
            f"thinning policy: epochs must list epochs >= 0, got {list(self.epochs)}",
        )
        require(
            list(self.epochs) == sorted(set(self.epochs)),
            f"thinning policy: epochs must be increasing, got {list(self.epochs)}",
        )

    @property
    def starting_epoch(self) -> int:
        return self.epochs[0]

    @property
    def window(self) -> EpochWindow:
        return EpochWindow(self.epochs[0], self.epochs[-1] + 1)


LM_PRUNING_SIZES = ("layers", "hidden", "kv_heads", "heads_per_group", "intermediate")


@dataclass(frozen=True)
class LanguageModelPruningPolicy:
    """Minitron's structured pruning of a Llama-family language model inside the run: at
    ``starting_epoch`` (and every ``frequency`` epochs for ``iterative_steps`` steps) the
    student's layers, attention heads, MLP channels and hidden channels are measured on
    calibration tokens of the training split and the least important removed; the rest of the
    run recovers it (by distillation when the run has a teacher)."""

    kind: Literal["lm_pruning"] = doc("policy type", "lm_pruning")
    params: float | None = doc(
        "the non-embedding parameters to keep: a fraction of the student's (<= 1, e.g. 0.5) or "
        "a count (e.g. 3.2e7); or give sizes instead",
        None,
    )
    axis: Literal["width", "depth", "both"] = doc(
        "what params narrows: width (hidden, heads, MLP), depth (layers) or both", "width"
    )
    layers: int | None = doc("explicit size: decoder layers to keep", None)
    hidden: int | None = doc("explicit size: hidden width, a multiple of the query heads", None)
    kv_heads: int | None = doc("explicit size: key/value heads per layer", None)
    heads_per_group: int | None = doc("explicit size: query heads per key/value head", None)
    intermediate: int | None = doc("explicit size: MLP width", None)
    layer_metric: Literal["perplexity", "cosine"] = doc(
        "which layers go: the least perplexity lost when skipped, or the least change from "
        "input to output (Minitron reports both)",
        "perplexity",
    )
    calibration_tokens: int = doc(
        "training tokens the importance is measured on (the first of the split, shuffled with "
        "seed 0)",
        4096,
    )
    starting_epoch: int = doc("epoch at whose start the first pruning step runs", 0)
    iterative_steps: int = doc(
        "reach the target in this many steps, one every `frequency` epochs (the parameters "
        "kept shrink linearly; the importance is measured again before each)",
        1,
    )
    frequency: int = doc("epochs between steps", 1)

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("lm_pruning", self.starting_epoch, None, self.frequency)
        sizes = {k: getattr(self, k) for k in LM_PRUNING_SIZES if getattr(self, k) is not None}
        require(
            (self.params is None) != (not sizes),
            "lm_pruning policy: give params (the parameters to keep) or sizes ("
            + ", ".join(LM_PRUNING_SIZES)
            + f"), exactly one of them; got params={self.params} and sizes {sizes or 'none'}",
        )
        require(
            self.params is None or self.params > 0,
            f"lm_pruning policy: params must be positive, got {self.params}",
        )
        for name, value in sizes.items():
            require(value >= 1, f"lm_pruning policy: {name} must be >= 1, got {value}")
        require(
            self.calibration_tokens >= 1,
            f"lm_pruning policy: calibration_tokens must be >= 1, got {self.calibration_tokens}",
        )
        require(
            self.iterative_steps >= 1,
            f"lm_pruning policy: iterative_steps must be >= 1, got {self.iterative_steps}",
        )
        require(
            self.iterative_steps == 1 or self.params is not None,
            "lm_pruning policy: iterative_steps > 1 shrinks the parameters kept step by step: "
            "give params (explicit sizes are reached in one step)",
        )

    @property
    def sizes(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in LM_PRUNING_SIZES if getattr(self, k) is not None}

    @property
    def last_step(self) -> int:
        return self.starting_epoch + (self.iterative_steps - 1) * self.frequency

    @property
    def window(self) -> EpochWindow:
        return EpochWindow(self.starting_epoch, self.last_step + 1)


@dataclass(frozen=True)
class LanguageModelQuantizationPolicy:
    """Quantization-aware distillation of a language model: from ``starting_epoch`` the
    weights of the student's Linear layers are fake-quantized (torchao's eager QAT: symmetric
    integers, one scale per output channel or per group of input channels) in every forward
    pass, so training (by distillation from the full-precision teacher when the run has one)
    learns weights that survive rounding. What the run evaluates is what weight-only integer
    inference computes."""

    kind: Literal["lm_quantization"] = doc("policy type", "lm_quantization")
    weight_bits: int = doc("bits of the weights (2..8; 4 and 8 are the usual)", 8)
    group_size: int | None = doc(
        "input channels sharing one scale (e.g. 32, 128); null = one scale per output channel",
        None,
    )
    activation_bits: int | None = doc(
        "also fake-quantize each Linear layer's input per token (dynamic, asymmetric) to this "
        "many bits (2..8); null = weights only",
        None,
    )
    skip: tuple[str, ...] | None = doc(
        "Linear layers kept in full precision: names or 're:regex'; null = the output head "
        "(as GPTQ and AWQ keep it)",
        None,
    )
    starting_epoch: int = doc("epoch at which fake quantization is inserted", 0)

    def __post_init__(self) -> None:
        check_fields(self, "policies[]")
        _check_range("lm_quantization", self.starting_epoch, None)
        require(
            2 <= self.weight_bits <= 8,
            f"lm_quantization policy: weight_bits must be in 2..8, got {self.weight_bits}",
        )
        require(
            self.activation_bits is None or 2 <= self.activation_bits <= 8,
            f"lm_quantization policy: activation_bits must be null or in 2..8, got "
            f"{self.activation_bits}",
        )
        require(
            self.group_size is None or self.group_size >= 1,
            f"lm_quantization policy: group_size must be >= 1 or null, got {self.group_size}",
        )

    @property
    def window(self) -> EpochWindow:
        return EpochWindow(self.starting_epoch, None)

    def describe(self) -> str:
        """``w4g32``, ``w8``, ``w4a8``: the setting in one word (records, logs)."""
        group = f"g{self.group_size}" if self.group_size else ""
        act = f"a{self.activation_bits}" if self.activation_bits else ""
        return f"w{self.weight_bits}{group}{act}"


PolicyConfig = (
    DistillationPolicy
    | QuantizationPolicy
    | PruningPolicy
    | ChannelPruningPolicy
    | RegularizationPolicy
    | ThinningPolicy
    | LanguageModelPruningPolicy
    | LanguageModelQuantizationPolicy
)
LANGUAGE_MODEL_POLICIES = ("lm_pruning", "lm_quantization")
