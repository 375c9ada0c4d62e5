"""The compression schedule as trainer callbacks: one per policy kind.

Order matters and is fixed by :func:`build_callbacks`: channel pruning (changes the
architecture), then quantization (turns the model into a fake-quantized graph), then unstructured
pruning (masks looked up by parameter name, so they survive the switch to the graph), then
regularization.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdistill.compression import pruning, quantization, regularization
from kdistill.compression.selection import first_and_last, select_layers
from kdistill.config.schema import (
    ChannelPruningPolicy,
    PruningPolicy,
    QuantizationPolicy,
    RegularizationPolicy,
)
from kdistill.engine.trainer import Callback, Trainer


class ChannelPruning(Callback):
    """Removes channels at ``starting_epoch + i * frequency`` for ``iterative_steps`` steps."""

    def __init__(
        self, policy: ChannelPruningPolicy, input_shape: tuple[int, ...], log: Callable[[str], None]
    ) -> None:
        self.policy = policy
        self.input_shape = input_shape
        self.log = log
        self.steps_done = 0
        self.shapes: dict[str, Any] | None = None
        self.params_before: int | None = None

    def step_epochs(self) -> list[int]:
        p = self.policy
        return [p.starting_epoch + i * p.frequency for i in range(p.iterative_steps)]

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch not in self.step_epochs() or self.steps_done > self.step_epochs().index(epoch):
            return
        student = trainer.student
        if self.params_before is None:
            self.params_before = sum(p.numel() for p in student.parameters())
        ignore = (
            list(self.policy.ignore) if self.policy.ignore is not None else first_and_last(student)
        )
        step = self.steps_done + 1
        ratio = pruning.step_ratio(self.policy.ratio, step, self.policy.iterative_steps)
        pruning.channel_prune(
            student, self.input_shape, ratio=ratio, ignore=ignore, round_to=self.policy.round_to
        )
        self.steps_done = step
        self.shapes = pruning.layer_shapes(student)
        trainer.replace_student(student)  # new, smaller parameters: re-wrap, new optimizer
        after = sum(p.numel() for p in student.parameters())
        self.log(
            f"channel pruning step {step}/{self.policy.iterative_steps}: {self.params_before:,} -> {after:,} parameters"
        )

    def on_restore(self, trainer: Trainer) -> None:
        if self.shapes is not None:
            pruning.apply_layer_shapes(trainer.student, self.shapes)
            trainer.student.to(trainer.device)

    def model_extra(self) -> dict[str, Any]:
        return {} if self.shapes is None else {"layer_shapes": self.shapes}

    def summary_extra(self, trainer: Trainer) -> dict[str, Any]:
        return {
            "channel_pruning": {
                "ratio": self.policy.ratio,
                "steps": self.steps_done,
                "params_before": self.params_before,
                "params_after": sum(p.numel() for p in trainer.student.parameters()),
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "shapes": json.dumps(self.shapes),
            "params_before": self.params_before or 0,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.shapes = json.loads(state["shapes"])
        self.params_before = int(state["params_before"]) or None


class Quantization(Callback):
    """Inserts fake quantization at ``starting_epoch``; converts to int8 ONNX at the end."""

    def __init__(
        self,
        policy: QuantizationPolicy,
        input_shape: tuple[int, ...],
        *,
        out_dir: Path,
        evaluate: Callable[[Any], dict[str, float]],
        onnx_metadata: Callable[[], Mapping[str, str]],
        log: Callable[[str], None],
        writes_files: bool = True,
    ) -> None:
        self.policy = policy
        self.writes_files = writes_files
        self.input_shape = input_shape
        self.out_dir = out_dir
        self.evaluate = evaluate
        self.onnx_metadata = onnx_metadata
        self.log = log
        self.prepared = False
        self.frozen = False
        self.layers: dict[str, Any] | None = None
        self.result: dict[str, Any] = {}

    def _prepare(self, trainer: Trainer) -> None:
        self.layers = quantization.layer_settings(trainer.student, self.policy)
        trainer.replace_student(
            quantization.prepare_qat(trainer.student, self.policy, self.input_shape)
        )
        self.prepared = True

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.prepared and epoch >= self.policy.starting_epoch:
            self._prepare(trainer)
            quantized = sum(1 for s in (self.layers or {}).values() if s is not None)
            self.log(
                f"quantization-aware training from epoch {epoch + 1}: {quantized} of {len(self.layers or {})} "
                f"layers at w{self.policy.weight_bits}a{self.policy.activation_bits}"
            )
        if (
            self.policy.freeze_epoch is not None
            and epoch >= self.policy.freeze_epoch
            and not self.frozen
        ):
            quantization.freeze_observers(trainer.student)
            self.frozen = True

    def on_restore(self, trainer: Trainer) -> None:
        if self.prepared:
            self._prepare(trainer)
            if self.frozen:
                quantization.freeze_observers(trainer.student)

    def on_eval_start(self, trainer: Trainer) -> None:
        if self.prepared:  # evaluation must not move the quantization ranges
            quantization.freeze_observers(trainer.student)

    def on_eval_end(self, trainer: Trainer) -> None:
        if self.prepared and not self.frozen:
            quantization.unfreeze_observers(trainer.student)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not self.prepared:
            return
        student = trainer.student
        quantization.freeze_observers(student)  # training is over: ranges are final
        self.frozen = True
        if not self.policy.convert or not self.writes_files:  # one process converts
            return
        fake = self.evaluate(student)
        path = self.out_dir / "model.int8.onnx"
        started = time.perf_counter()
        quantization.convert_to_onnx(student, self.input_shape, path, self.onnx_metadata())
        session = quantization.onnx_session(path, threads=torch.get_num_threads())
        converted = self.evaluate(quantization.onnx_predictor(session))
        latency = {f"batch_{b}": _onnx_latency_ms(session, self.input_shape, b) for b in (1, 128)}
        self.result = {
            "onnx_path": str(path),
            "onnx_bytes": path.stat().st_size,
            "convert_s": time.perf_counter() - started,
            "fake_quant_test_top1": fake["top1"],
            "int8_test_top1": converted["top1"],
            "int8_cpu_latency_ms": latency,
        }
        self.log(
            f"int8 model: {path} (test top-1 {converted['top1']:.2%} after conversion vs "
            f"{fake['top1']:.2%} fake-quantized)"
        )

    def model_extra(self) -> dict[str, Any]:
        if not self.prepared:
            return {}
        policy = {k: getattr(self.policy, k) for k in (*quantization.SETTINGS, "overrides")}
        return {"qat": policy}

    def summary_extra(self, trainer: Trainer) -> dict[str, Any]:
        if not self.prepared or self.layers is None:
            return {}
        bits = {
            n: ("fp32" if s is None else f"w{s['weight_bits']}a{s['activation_bits']}")
            for n, s in self.layers.items()
        }
        return {
            "quantization": {
                "layers": bits,
                "packed_weight_bytes": quantization.packed_size_bytes(trainer.student, self.layers),
                **self.result,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {"prepared": self.prepared, "frozen": self.frozen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prepared = bool(state["prepared"])
        self.frozen = bool(state["frozen"])


def _onnx_latency_ms(
    session: Any, input_shape: tuple[int, ...], batch: int, reps: int = 5
) -> float:
    import statistics

    import numpy as np

    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class UnstructuredPruning(Callback):
    """Magnitude masks on a schedule (AGP or one-shot), re-applied after every optimizer step."""

    def __init__(self, policy: PruningPolicy, epochs: int, log: Callable[[str], None]) -> None:
        self.policy = policy
        last = epochs - 1
        self.end = last if policy.ending_epoch is None else min(policy.ending_epoch, last)
        self.log = log
        self.pruner: pruning.MaskPruner | None = None
        self.last_target = 0.0
        self._saved: Mapping[str, Any] | None = None

    def _ensure(self, trainer: Trainer) -> pruning.MaskPruner:
        if self.pruner is None:
            layers = select_layers(
                trainer.student, self.policy.modules, what="pruning policy modules"
            )
            self.pruner = pruning.MaskPruner([f"{n}.weight" for n in layers], self.policy.scope)
            if self._saved is not None:
                self.pruner.load_state_dict(self._saved)
        return self.pruner

    def target(self, epoch: int) -> float | None:
        """The sparsity to prune to at the start of ``epoch`` (``None``: no pruning step)."""
        p = self.policy
        if epoch < p.starting_epoch:
            return None
        if p.schedule == "one_shot":
            return p.target_sparsity if epoch == p.starting_epoch else None
        if epoch > self.end or ((epoch - p.starting_epoch) % p.frequency and epoch != self.end):
            return None
        return pruning.agp_sparsity(
            epoch,
            initial=p.initial_sparsity,
            final=p.target_sparsity,
            start=p.starting_epoch,
            span=self.end - p.starting_epoch,
        )

    def on_fit_start(self, trainer: Trainer) -> None:
        self._ensure(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        target = self.target(epoch)
        pruner = self._ensure(trainer)
        if target is not None and target > 0:
            pruner.prune_to(trainer.student, target)
            self.last_target = target
            self.log(
                f"pruning: {target:.1%} of the selected weights are zero from epoch {epoch + 1}"
            )
        pruner.apply(trainer.student)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.pruner is not None:
            self.pruner.apply(trainer.student)

    def summary_extra(self, trainer: Trainer) -> dict[str, Any]:
        names = self.pruner.param_names if self.pruner is not None else None
        return {
            "pruning": {
                "target_sparsity": self.policy.target_sparsity,
                **pruning.sparsity_report(trainer.student, names),
            }
        }

    def state_dict(self) -> dict[str, Any]:
        state = (
            self.pruner.state_dict()
            if self.pruner is not None
            else {"param_names": [], "masks": {}}
        )
        return {**state, "last_target": self.last_target}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved = state
        self.last_target = float(state["last_target"])
        if self.pruner is not None:
            self.pruner.load_state_dict(state)


class Regularization(Callback):
    """Adds ``weight * penalty`` to the loss in the policy's epochs."""

    def __init__(self, policy: RegularizationPolicy, index: int) -> None:
        self.policy = policy
        self.name = f"reg_{policy.type}" + (f"_{index}" if index else "")
        self.active = False
        self.layers: list[str] | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        p = self.policy
        self.active = epoch >= p.starting_epoch and (
            p.ending_epoch is None or epoch < p.ending_epoch
        )
        if self.layers is None:
            self.layers = select_layers(
                trainer.student, p.modules, what="regularization policy modules"
            )

    def extra_loss(self, trainer: Trainer) -> dict[str, tuple[torch.Tensor, float]]:
        if not self.active or self.layers is None:
            return {}
        weights = regularization.weights_of(trainer.student, self.layers)
        return {
            self.name: (regularization.PENALTIES[self.policy.type](weights), self.policy.weight)
        }


def build_callbacks(
    policies: Sequence[Any],
    *,
    epochs: int,
    input_shape: tuple[int, ...],
    out_dir: Path,
    evaluate: Callable[[Any], dict[str, float]],
    onnx_metadata: Callable[[], Mapping[str, str]],
    log: Callable[[str], None],
    writes_files: bool = True,
) -> list[Callback]:
    """The callbacks of a run's compression policies, in the order they must act."""
    by_kind = {p.kind: p for p in policies}
    callbacks: list[Callback] = []
    if "channel_pruning" in by_kind:
        callbacks.append(ChannelPruning(by_kind["channel_pruning"], input_shape, log))
    if "quantization" in by_kind:
        callbacks.append(
            Quantization(
                by_kind["quantization"],
                input_shape,
                out_dir=out_dir,
                evaluate=evaluate,
                onnx_metadata=onnx_metadata,
                log=log,
            )
        )
    if "pruning" in by_kind:
        callbacks.append(UnstructuredPruning(by_kind["pruning"], epochs, log))
    regs = [p for p in policies if p.kind == "regularization"]
    callbacks += [Regularization(p, i) for i, p in enumerate(regs)]
    return callbacks
