"""Compression of a language-model student inside its run (the "when" of the LM policies), as
trainer callbacks beside the image ones of :mod:`kdistill.compression.callbacks`.

* :class:`LanguageModelPruning`: Minitron's pruning as a step of the run. At its epochs the
  student's parts are measured on calibration tokens of the training split
  (:mod:`~kdistill.compression.lm_importance`) and the least important removed
  (:mod:`~kdistill.compression.lm_pruning`); the smaller student replaces the old one and the
  rest of the run recovers it. Its model files record the pruned Hugging Face config
  (:meth:`structure`), which rebuilds the smaller architecture when a run resumes or a model
  file is loaded.
* :class:`LanguageModelQuantization`: quantization-aware training of the student's Linear
  layers (torchao's eager QAT: weights fake-quantized in every forward pass, optionally the
  inputs per token), inserted at ``starting_epoch``; its model files record the setting, which
  inserts the same fake quantization when they are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.compression.lm_importance import (
    activation_importance,
    calibration_perplexity,
    llama_shape,
)
from kdistill.compression.lm_pruning import (
    PruneSizes,
    plan_pruning,
    prune_llama,
    sizes_for_parameters,
)
from kdistill.compression.selection import matches
from kdistill.engine.trainer import Callback, Trainer
from kdistill.extras import require
from kdistill.models.causal_lm import CausalLM, config_record
from kdistill.objectives.tokens import output_head
from kdistill.policies import LanguageModelPruningPolicy, LanguageModelQuantizationPolicy

Log = Callable[[str], None]
Batches = list[tuple[Tensor, Tensor]]


class LanguageModelPruning(Callback):
    """Prunes the student at ``starting_epoch + i * frequency`` for ``iterative_steps`` steps,
    the non-embedding parameters kept shrinking linearly to the target."""

    def __init__(
        self, policy: LanguageModelPruningPolicy, calibration: Callable[[], Batches], log: Log
    ) -> None:
        self.policy = policy
        self.calibration = calibration
        self.log = log
        self.steps_done = 0
        self.config: dict[str, Any] | None = None  # the pruned student's Hugging Face config
        self.before: dict[str, Any] | None = None  # the student's shape and sizes before
        self.history: list[dict[str, Any]] = []  # one entry per step

    def check(self, model: nn.Module) -> None:
        """The student is a Llama-family Hugging Face model and the sizes fit it (before
        anything is trained)."""
        if not isinstance(model, CausalLM):
            raise ValueError(
                f"lm_pruning prunes a Llama-family Hugging Face model (model.checkpoint: "
                f"smollm2, a .gguf file or a Hugging Face directory), not {type(model).__name__}"
            )
        shape = llama_shape(model)  # names a model of another structure
        if self.policy.params is None:
            PruneSizes(**self.policy.sizes).apply(shape)
        else:
            self._target(shape.non_embedding_params())

    def _target(self, original: int) -> int:
        params = self.policy.params
        assert params is not None
        target = round(original * params) if params <= 1 else int(params)
        if not 0 < target <= original:
            raise ValueError(
                f"lm_pruning policy: params={params:g} asks for {target:,} non-embedding "
                f"parameters; the student has {original:,}"
            )
        return target

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.policy.window.is_step(epoch, self.policy.frequency):
            return
        step = (epoch - self.policy.starting_epoch) // self.policy.frequency + 1
        if step <= self.steps_done:  # done before an interruption
            return
        student = trainer.student
        shape = llama_shape(student)
        if self.before is None:
            self.before = {
                "shape": asdict(shape),
                "params": shape.params(),
                "non_embedding_params": shape.non_embedding_params(),
            }
        device = next(student.parameters()).device
        batches = [(x.to(device), y.to(device)) for x, y in self.calibration()]
        importance = activation_importance(student, batches)
        sizes = self._sizes(shape, step)
        plan = plan_pruning(importance, shape, sizes, layer_metric=self.policy.layer_metric)
        pruned = CausalLM(prune_llama(student, plan), student.source)
        after = llama_shape(pruned)
        pruned.to(device)
        self.history.append(
            {
                "epoch": epoch,
                "shape": asdict(after),
                "params": after.params(),
                "non_embedding_params": after.non_embedding_params(),
                "calibration_perplexity_before": importance.perplexity,
                "calibration_perplexity_after": calibration_perplexity(pruned, batches),
                "calibration_tokens": importance.tokens,
                "layers": importance.layer_table(),  # what `kdistill report` shows
            }
        )
        self.config = config_record(pruned)
        self.steps_done = step
        trainer.replace_student(pruned)  # new, smaller parameters: a new optimizer
        last = self.history[-1]
        self.log(
            f"language-model pruning step {step}/{self.policy.iterative_steps}: "
            f"{shape.params():,} -> {after.params():,} parameters (layers {shape.layers} -> "
            f"{after.layers}, hidden {shape.hidden} -> {after.hidden}, heads {shape.heads} -> "
            f"{after.heads}, MLP {shape.intermediate} -> {after.intermediate}); calibration "
            f"perplexity {last['calibration_perplexity_before']:.2f} -> "
            f"{last['calibration_perplexity_after']:.2f}"
        )

    def _sizes(self, shape: Any, step: int) -> PruneSizes:
        """This step's sizes: the explicit ones (one step), or those closest to this step's
        share of the way from the original parameters to the target (never more than now)."""
        if self.policy.params is None:
            return PruneSizes(**self.policy.sizes)
        assert self.before is not None
        original = self.before["non_embedding_params"]
        target = self._target(original)
        goal = round(original - (original - target) * step / self.policy.iterative_steps)
        return sizes_for_parameters(
            shape, min(goal, shape.non_embedding_params()), self.policy.axis
        )

    def structure(self) -> dict[str, Any]:
        """What a model file records to rebuild the pruned student (its config)."""
        return {} if self.config is None else {"hf_config": self.config}

    def report(self, student: nn.Module) -> dict[str, Any]:
        if not self.history or self.before is None:
            return {}
        last = self.history[-1]
        return {
            "lm_pruning": {
                "steps": self.steps_done,
                "axis": None if self.policy.params is None else self.policy.axis,
                "layer_metric": self.policy.layer_metric,
                "params_before": self.before["params"],
                "params_after": sum(p.numel() for p in student.parameters()),
                "non_embedding_params_before": self.before["non_embedding_params"],
                "non_embedding_params_after": last["non_embedding_params"],
                "shape_before": self.before["shape"],
                "shape_after": last["shape"],
                "history": self.history,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "config": self.config,
            "before": self.before,
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.config = state["config"]
        self.before = state["before"]
        self.history = list(state["history"])


def quantized_linears(model: nn.Module, policy: LanguageModelQuantizationPolicy) -> list[str]:
    """The names of the Linear layers ``policy`` quantizes: all but those it skips (by default
    the output head). A skip pattern that matches no Linear layer is named."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if policy.skip is None:
        head = output_head(model) or getattr(model, "head", None)
        skipped = {n for n, m in model.named_modules() if m is head}
    else:
        for pattern in policy.skip:
            if not any(matches(n, pattern) for n in linears):
                shown = ", ".join(linears[:8]) + (" ..." if len(linears) > 8 else "")
                raise ValueError(
                    f"lm_quantization policy: skip {pattern!r} matches no Linear layer; "
                    f"layers: {shown}"
                )
        skipped = {n for n in linears if any(matches(n, p) for p in policy.skip)}
    return [n for n in linears if n not in skipped]


def fake_quantize(model: nn.Module, policy: LanguageModelQuantizationPolicy) -> list[str]:
    """Swap ``model``'s quantized Linear layers for torchao's fake-quantized ones, in place
    (their parameters, and so checkpoints, keep their names); returns their names."""
    require("torchao", "quant")
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    names = quantized_linears(model, policy)
    modules = dict(model.named_modules())
    group = policy.group_size
    if group is not None:
        bad = [n for n in names if modules[n].in_features % group]
        if bad:
            raise ValueError(
                f"lm_quantization policy: group_size={group} does not divide the input width of "
                f"{', '.join(f'{n} ({modules[n].in_features})' for n in bad[:4])}; choose a "
                "divisor, or null for one scale per output channel"
            )
    dtype = getattr(torch, f"int{policy.weight_bits}")
    weight = (
        IntxFakeQuantizeConfig(dtype, group_size=group, is_symmetric=True)
        if group is not None
        else IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=True)
    )
    activation = (
        None
        if policy.activation_bits is None
        else IntxFakeQuantizeConfig(
            getattr(torch, f"int{policy.activation_bits}"), "per_token", is_symmetric=False
        )
    )
    chosen = {id(modules[n]) for n in names}
    quantize_(
        model,
        QATConfig(activation_config=activation, weight_config=weight, step="prepare"),
        filter_fn=lambda module, _fqn: id(module) in chosen,
    )
    return names


def packed_bytes(
    model: nn.Module, names: Sequence[str], policy: LanguageModelQuantizationPolicy
) -> int:
    """Bytes of the parameters with the quantized weights packed at their bit width plus one
    32-bit scale per group (per row without groups); everything else at 32 bits. A weight
    shared by several modules (tied embeddings) is counted once, at 32 bits unless every user
    quantizes it."""
    modules = dict(model.named_modules())
    quantized = {id(modules[n].weight): modules[n] for n in names}
    total = 0
    for p in model.parameters():  # each once, tied ones too
        linear = quantized.get(id(p))
        if linear is None:
            total += p.numel() * 32
            continue
        groups_per_row = 1 if policy.group_size is None else linear.in_features // policy.group_size
        total += p.numel() * policy.weight_bits + linear.out_features * groups_per_row * 32
    return total // 8


class LanguageModelQuantization(Callback):
    """Inserts fake quantization of the student's Linear layers at ``starting_epoch``."""

    def __init__(self, policy: LanguageModelQuantizationPolicy, log: Log) -> None:
        self.policy = policy
        self.log = log
        self.layers: list[str] | None = None  # set once inserted

    def check(self, model: nn.Module) -> None:
        quantized_linears(model, self.policy)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.layers is not None or epoch < self.policy.starting_epoch:
            return
        student = trainer.student
        self.layers = fake_quantize(student, self.policy)
        trainer.replace_student(student)  # new modules: a new optimizer over their weights
        self.log(
            f"quantization-aware training ({self.policy.describe()}) from epoch {epoch + 1}: "
            f"{len(self.layers)} Linear layers"
        )

    def structure(self) -> dict[str, Any]:
        if self.layers is None:
            return {}
        return {"lm_qat": {k: v for k, v in asdict(self.policy).items() if k != "kind"}}

    def report(self, student: nn.Module) -> dict[str, Any]:
        if self.layers is None:
            return {}
        return {
            "lm_quantization": {
                "setting": self.policy.describe(),
                "layers": len(self.layers),
                "packed_bytes": packed_bytes(student, self.layers, self.policy),
                "fp32_bytes": 4 * sum(p.numel() for p in student.parameters()),
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {"layers": self.layers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.layers = state["layers"]


def build_lm_callbacks(
    policies: Sequence[Any], *, calibration: Callable[[], Batches], log: Log
) -> list[Callback]:
    """The callbacks of a language-model run's policies: pruning, then quantization."""
    callbacks: list[Callback] = []
    for policy in policies:
        if isinstance(policy, LanguageModelPruningPolicy):
            callbacks.append(LanguageModelPruning(policy, calibration, log))
    for policy in policies:
        if isinstance(policy, LanguageModelQuantizationPolicy):
            require("torchao", "quant")
            callbacks.append(LanguageModelQuantization(policy, log))
    return callbacks
