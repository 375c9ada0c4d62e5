"""The compression schedule as trainer callbacks: one per policy kind (the "when").

Order matters and is fixed by :func:`build_callbacks`: channel pruning (changes the
architecture), then quantization (turns the model into a fake-quantized graph), then unstructured
pruning (masks looked up by parameter name, so they survive the switch to the graph), then
regularization. What a compressed student *is* (its pruned channel counts, its quantization)
is read off these callbacks by :func:`structure_record` for its model files, and what they did
by :func:`compression_report` for the run record. Conversion to int8 is the export step
(:mod:`kdistill.compression.export`), which the run calls after training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdistill.compression import pruning, quantization, regularization
from kdistill.compression.selection import first_and_last, select_layers, weight_layers
from kdistill.engine.trainer import Callback, Trainer
from kdistill.extras import require
from kdistill.policies import (
    ChannelPruningPolicy,
    PruningPolicy,
    QuantizationPolicy,
    RegularizationPolicy,
    ThinningPolicy,
)
from kdistill.validation import QUANT_SETTINGS, EpochWindow

Log = Callable[[str], None]


class ChannelPruning(Callback):
    """Removes channels at ``starting_epoch + i * frequency`` for ``iterative_steps`` steps."""

    def __init__(
        self, policy: ChannelPruningPolicy, input_shape: tuple[int, ...], log: Log
    ) -> None:
        self.policy = policy
        self.steps = EpochWindow(policy.starting_epoch, policy.last_step + 1)
        self.input_shape = input_shape
        self.log = log
        self.steps_done = 0
        self.shapes: dict[str, Any] | None = None
        self.params_before: int | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.steps.is_step(epoch, self.policy.frequency):
            return
        step = (epoch - self.policy.starting_epoch) // self.policy.frequency + 1
        if step <= self.steps_done:  # done before an interruption
            return
        student = trainer.student
        if self.params_before is None:
            self.params_before = sum(p.numel() for p in student.parameters())
        ignore = (
            list(self.policy.ignore) if self.policy.ignore is not None else first_and_last(student)
        )
        ratio = pruning.step_ratio(self.policy.ratio, step, self.policy.iterative_steps)
        pruning.channel_prune(
            student, self.input_shape, ratio=ratio, ignore=ignore, round_to=self.policy.round_to
        )
        self.steps_done = step
        self.shapes = pruning.layer_shapes(student)
        trainer.replace_student(student)  # new, smaller parameters: re-wrap, new optimizer
        after = sum(p.numel() for p in student.parameters())
        self.log(
            f"channel pruning step {step}/{self.policy.iterative_steps}: "
            f"{self.params_before:,} -> {after:,} parameters"
        )

    def check(self, model: nn.Module) -> None:
        names = dict(model.named_modules())
        unknown = [n for n in self.policy.ignore or () if n not in names]
        if unknown:
            raise ValueError(
                f"channel_pruning policy: ignore names {', '.join(unknown)}, which the model "
                f"does not have; layers: {', '.join(weight_layers(model))}"
            )

    @property
    def changed_at(self) -> int:
        """The epoch of the last step that changed the structure."""
        return self.policy.starting_epoch + (self.steps_done - 1) * self.policy.frequency

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "shapes": self.shapes,
            "params_before": self.params_before,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.shapes = state["shapes"]
        self.params_before = state["params_before"]


class Quantization(Callback):
    """Inserts fake quantization at ``starting_epoch`` (quantization-aware training)."""

    def __init__(self, policy: QuantizationPolicy, input_shape: tuple[int, ...], log: Log) -> None:
        self.policy = policy
        self.input_shape = input_shape
        self.log = log
        self.prepared = False
        self.frozen = False
        self.layers: dict[str, Any] | None = None

    def check(self, model: nn.Module) -> None:
        """The layer names the policy's overrides use exist (``ValueError`` naming them)."""
        quantization.layer_settings(model, self.policy)

    def on_fit_start(self, trainer: Trainer) -> None:
        # Resumed after QAT began: the student was rebuilt as the fake-quantized graph from the
        # checkpoint's model file, with its observers off; they run again unless frozen.
        if self.prepared and not self.frozen:
            quantization.unfreeze_observers(trainer.student)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.prepared and epoch >= self.policy.starting_epoch:
            self.layers = quantization.layer_settings(trainer.student, self.policy)
            trainer.replace_student(
                quantization.prepare_qat(trainer.student, self.policy, self.input_shape)
            )
            self.prepared = True
            counts = Counter(
                "fp32" if s is None else f"w{s['weight_bits']}a{s['activation_bits']}"
                for s in self.layers.values()
            )
            self.log(
                f"quantization-aware training from epoch {epoch + 1}, {len(self.layers)} layers: "
                + ", ".join(f"{n} at {setting}" for setting, n in counts.most_common())
            )
        freeze = self.policy.freeze_epoch
        if freeze is not None and epoch >= freeze and not self.frozen:
            quantization.freeze_observers(trainer.student)
            self.frozen = True

    def on_eval_start(self, trainer: Trainer) -> None:
        if self.prepared:  # evaluation must not move the quantization ranges
            quantization.freeze_observers(trainer.student)

    def on_eval_end(self, trainer: Trainer, split: str, evaluation: Any) -> None:
        if self.prepared and not self.frozen:
            quantization.unfreeze_observers(trainer.student)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.prepared:  # training is over: the ranges are final
            quantization.freeze_observers(trainer.student)
            self.frozen = True

    def state_dict(self) -> dict[str, Any]:
        return {"prepared": self.prepared, "frozen": self.frozen, "layers": self.layers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prepared = bool(state["prepared"])
        self.frozen = bool(state["frozen"])
        self.layers = state["layers"]


class UnstructuredPruning(Callback):
    """Magnitude masks on a schedule (AGP or one-shot), re-applied after every optimizer step:
    single weights, or whole filters/channels (``structure``), which ``remove_epoch`` then
    removes from the network. (The class keeps its first name: checkpoints key its state by it.)
    """

    def __init__(
        self, policy: PruningPolicy, epochs: int, input_shape: tuple[int, ...], log: Log
    ) -> None:
        self.policy = policy
        # AGP reaches the target here; a window past the run keeps its own curve (Distiller's
        # schedules longer than --epochs), which the run's end cuts off
        self.end = (
            policy.last_step
            if policy.schedule == "agp" and policy.last_step is not None
            else policy.window.last(epochs)
        )
        self.epochs = epochs
        self.input_shape = input_shape
        self.log = log
        self.pruner: pruning.MaskPruner | None = None
        self.last_target = 0.0
        self.removed = False
        self.shapes: dict[str, Any] | None = None  # the layer shapes after removal
        self._saved: Mapping[str, Any] | None = None
        self.siblings: Sequence[UnstructuredPruning] = ()  # every pruning policy of the run

    @property
    def changed_at(self) -> int:
        """The epoch at which the zeroed groups were removed (the structure changed)."""
        return self.policy.remove_epoch if self.policy.remove_epoch is not None else -1

    def layers(self, model: nn.Module) -> list[str]:
        return select_layers(model, self.policy.modules, what="pruning policy modules")

    def check(self, model: nn.Module) -> None:
        self.layers(model)

    def _ensure(self, trainer: Trainer) -> pruning.MaskPruner:
        if self.pruner is None:
            layers = self.layers(trainer.student)
            self.pruner = pruning.MaskPruner(
                [f"{n}.weight" for n in layers],
                self.policy.scope,
                self.policy.structure,
                leader=self.policy.group_dependency == "leader",
            )
            if self._saved is not None:
                self.pruner.load_state_dict(self._saved)
        return self.pruner

    def target(self, epoch: int) -> float | None:
        """The sparsity to prune to at the start of ``epoch`` (``None``: no pruning step; a
        threshold schedule has steps but no target: :meth:`threshold_step`)."""
        p = self.policy
        if p.schedule == "one_shot":
            return p.target_sparsity if epoch == p.starting_epoch else None
        if p.schedule == "threshold":
            return None
        window = EpochWindow(p.starting_epoch, self.end + 1)
        if not (window.is_step(epoch, p.frequency) or epoch == self.end):
            return None
        return pruning.agp_sparsity(
            epoch,
            initial=p.initial_sparsity,
            final=p.target_sparsity,
            start=p.starting_epoch,
            span=self.end - p.starting_epoch,
        )

    def threshold_step(self, epoch: int) -> bool:
        """Whether a threshold schedule prunes at the start of ``epoch``."""
        p = self.policy
        return p.schedule == "threshold" and p.window.is_step(epoch, p.frequency)

    @property
    def steps(self) -> tuple[int, int]:
        """The first and last epoch in which this policy prunes."""
        p = self.policy
        return (p.starting_epoch, p.starting_epoch if p.schedule == "one_shot" else self.end)

    def on_fit_start(self, trainer: Trainer) -> None:
        mine = set(self._ensure(trainer).param_names)
        for other in self.siblings:
            if other is self or other.pruner is None:
                continue
            shared = sorted(mine & set(other.pruner.param_names))
            (a0, a1), (b0, b1) = self.steps, other.steps
            if shared and a0 <= b1 and b0 <= a1:
                raise ValueError(
                    f"pruning policies: {', '.join(n[: -len('.weight')] for n in shared)} "
                    f"pruned by two policies in the same epochs ({a0}..{a1} and {b0}..{b1}); a "
                    "layer may be pruned by several policies only one after the other (list "
                    "disjoint modules, or disjoint epochs)"
                )
        if self.policy.schedule == "agp" and self.end >= self.epochs and trainer.state.epoch == 0:
            reached = pruning.agp_sparsity(
                self.epochs - 1,
                initial=self.policy.initial_sparsity,
                final=self.policy.target_sparsity,
                start=self.policy.starting_epoch,
                span=self.end - self.policy.starting_epoch,
            )
            self.log(
                f"pruning: the AGP schedule ends at epoch {self.end + 1}, after the run's "
                f"{self.epochs} epochs: its last step in this run reaches "
                f"{reached:.1%} sparsity, not the target {self.policy.target_sparsity:.1%}"
            )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        target = self.target(epoch)
        pruner = self._ensure(trainer)
        if self.threshold_step(epoch):
            assert self.policy.threshold is not None
            pruner.prune_below(trainer.student, self.policy.threshold, self.policy.threshold_in_std)
            names = pruner.param_names
            self.last_target = pruning.sparsity_report(trainer.student, names)[
                "pruned_weights_sparsity"
            ]
            self.log(
                f"pruning: weights at or below the threshold zeroed, {self.last_target:.1%} of "
                f"the selected weights are zero from epoch {epoch + 1}"
            )
        elif target is not None and target > 0:
            pruner.prune_to(trainer.student, target)
            self.last_target = target
            what = "weights" if self.policy.structure == "elements" else self.policy.structure
            self.log(
                f"pruning: {target:.1%} of the selected {what} are zero from epoch {epoch + 1}"
            )
        pruner.apply(trainer.student)
        if epoch == self.policy.remove_epoch and not self.removed:
            self._remove(trainer, pruner)

    def _remove(self, trainer: Trainer, pruner: pruning.MaskPruner) -> None:
        student = trainer.student
        before = sum(p.numel() for p in student.parameters())
        layers = [n[: -len(".weight")] for n in pruner.param_names]
        outcome = pruning.remove_zeroed_groups(
            student, self.input_shape, layers, self.policy.structure
        )
        # Removal changes the shapes of the next layers too, which other policies may mask.
        for cb in {id(c): c for c in (self, *self.siblings)}.values():
            if cb.pruner is not None:
                cb.pruner.refresh(student)
        self.removed = True
        self.shapes = pruning.layer_shapes(student)
        trainer.replace_student(student)  # new, smaller parameters: re-wrap, new optimizer
        after = sum(p.numel() for p in student.parameters())
        for name, what in outcome.items():
            self.log(f"  {name}: {what}")
        self.log(f"removed the zeroed {self.policy.structure}: {before:,} -> {after:,} parameters")

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.pruner is not None:
            self.pruner.apply(trainer.student)

    def state_dict(self) -> dict[str, Any]:
        state = (
            self.pruner.state_dict()
            if self.pruner is not None
            else {"param_names": [], "masks": {}}
        )
        return {
            **state,
            "last_target": self.last_target,
            "removed": self.removed,
            "shapes": self.shapes,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved = state
        self.last_target = float(state["last_target"])
        self.removed = bool(state.get("removed", False))
        self.shapes = state.get("shapes")
        if self.pruner is not None:
            self.pruner.load_state_dict(state)


class Thinning(Callback):
    """Removes the all-zero filters (or input channels) of the chosen Conv2d layers at the start
    of each of the policy's epochs, after that epoch's pruning steps (Distiller's thinning)."""

    def __init__(self, policy: ThinningPolicy, input_shape: tuple[int, ...], log: Log) -> None:
        self.policy = policy
        self.input_shape = input_shape
        self.log = log
        self.done: list[int] = []  # epochs thinned (kept across a resume)
        self.shapes: dict[str, Any] | None = None
        self.pruners: Sequence[UnstructuredPruning] = ()  # whose masks follow the new shapes

    @property
    def changed_at(self) -> int:
        return self.done[-1] if self.done else -1

    def convs(self, model: nn.Module) -> list[str]:
        """The Conv2d layers thinned (Distiller thins 4-D weights only)."""
        chosen = select_layers(model, self.policy.modules, what="thinning policy modules")
        return [n for n in chosen if isinstance(model.get_submodule(n), nn.Conv2d)]

    def check(self, model: nn.Module) -> None:
        self.convs(model)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch not in self.policy.epochs or epoch in self.done:
            return
        student = trainer.student
        convs = self.convs(student)
        before = sum(p.numel() for p in student.parameters())
        outcome = pruning.remove_zeroed_groups(
            student, self.input_shape, convs, self.policy.structure
        )
        for cb in self.pruners:
            if cb.pruner is not None:
                cb.pruner.refresh(student)
        self.done.append(epoch)
        self.shapes = pruning.layer_shapes(student)
        trainer.replace_student(student)  # new, smaller parameters: re-wrap, new optimizer
        after = sum(p.numel() for p in student.parameters())
        for name, what in outcome.items():
            if what != "nothing to remove":
                self.log(f"  {name}: {what}")
        self.log(
            f"thinning at epoch {epoch + 1}: the zeroed {self.policy.structure} removed, "
            f"{before:,} -> {after:,} parameters"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "shapes": self.shapes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done = [int(e) for e in state.get("done", [])]
        self.shapes = state.get("shapes")


class Regularization(Callback):
    """Adds ``weight * penalty`` to the loss in the policy's epochs; with a ``threshold``, zeroes
    the groups at or below it after every step of the window (Distiller's thresholded group
    lasso), and with ``keep_mask`` keeps the last step's zeros for the rest of training."""

    def __init__(self, policy: RegularizationPolicy, index: int, epochs: int = 0) -> None:
        self.policy = policy
        self.name = f"reg_{policy.type}" + (f"_{index}" if index else "")
        self.active = False
        self.layers: list[str] | None = None
        self.last_epoch = policy.window.last(epochs) if epochs else -1
        self.epoch = -1
        self.kept: dict[str, torch.Tensor] = {}  # keep_mask: weight name -> mask
        self.groups = policy.groups if policy.type == "group_lasso" else None

    def check(self, model: nn.Module) -> None:
        select_layers(model, self.policy.modules, what="regularization policy modules")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.active = self.policy.window.contains(epoch)
        self.epoch = epoch
        if self.layers is None:
            self.layers = select_layers(
                trainer.student, self.policy.modules, what="regularization policy modules"
            )

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, step: int) -> None:
        p = self.policy
        thresholding = self.active and p.threshold is not None and self.layers is not None
        if not (self.kept or thresholding):
            return  # a penalty alone: nothing to do after the step
        params = dict(trainer.student.named_parameters())
        if self.kept:
            for name, mask in list(self.kept.items()):
                weight = params.get(name)
                if weight is None:
                    continue
                if mask.shape != weight.shape:  # thinned since: its zeros are the mask
                    mask = self.kept[name] = (weight.detach() != 0).cpu()
                weight.mul_(mask.to(weight.device, weight.dtype))
        if not thresholding:
            return
        for name in self.layers or ():
            weight = params.get(f"{name}.weight")
            if weight is not None:
                mask = regularization.threshold_mask(
                    weight,
                    self.groups,
                    p.threshold_criteria,
                    p.threshold,  # type: ignore[arg-type]
                )
                weight.mul_(mask.to(weight.device, weight.dtype))

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        p = self.policy
        if p.keep_mask and p.threshold is not None and epoch == self.last_epoch:
            # the last step's zeros (the step thresholded the weights, so they are exactly the
            # groups at or below the threshold) stay zero from now on
            params = dict(trainer.student.named_parameters())
            self.kept = {
                f"{n}.weight": regularization.threshold_mask(
                    params[f"{n}.weight"], self.groups, p.threshold_criteria, p.threshold
                ).cpu()
                for n in self.layers or ()
                if f"{n}.weight" in params
            }

    def state_dict(self) -> dict[str, Any]:
        return {"kept": {n: m.clone() for n, m in self.kept.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.kept = {n: m.bool() for n, m in state.get("kept", {}).items()}

    def extra_loss(self, trainer: Trainer) -> dict[str, tuple[torch.Tensor, float]]:
        if not self.active or self.layers is None:
            return {}
        weights = regularization.weights_of(trainer.student, self.layers)
        penalty = (
            regularization.group_lasso_penalty(weights, self.policy.groups)
            if self.policy.type == "group_lasso"
            else regularization.l1_penalty(weights)
        )
        return {self.name: (penalty, self.policy.weight)}


def build_callbacks(
    policies: Sequence[Any], *, epochs: int, input_shape: tuple[int, ...], log: Log
) -> list[Callback]:
    """The callbacks of a run's compression policies, in the order they must act."""
    by_kind = {p.kind: p for p in policies}
    kinds = set(by_kind)
    # Their packages are optional extras: a missing one stops the run before it starts.
    if "channel_pruning" in by_kind:
        require("torch_pruning", "prune")
    if "quantization" in by_kind:
        require("torchao", "quant")
        require("onnxruntime", "quant")  # the int8 ONNX model written at the end
        require("onnxscript", "quant")
    if "thinning" in kinds or any(getattr(p, "remove_epoch", None) is not None for p in policies):
        require("torch_pruning", "prune")
    callbacks: list[Callback] = []
    if "channel_pruning" in by_kind:
        callbacks.append(ChannelPruning(by_kind["channel_pruning"], input_shape, log))
    # Pruning before quantization: a structured policy may remove filters at the epoch QAT
    # starts (masks are looked up by parameter name, so they survive the switch to the graph).
    prunings = [p for p in policies if p.kind == "pruning"]
    pruners = [UnstructuredPruning(p, epochs, input_shape, log) for p in prunings]
    for cb in pruners:
        cb.siblings = pruners
    callbacks += pruners
    # Thinning after the pruning steps of its epoch (what they zeroed is removed at once).
    for policy in (p for p in policies if p.kind == "thinning"):
        thinning = Thinning(policy, input_shape, log)
        thinning.pruners = pruners
        callbacks.append(thinning)
    if "quantization" in by_kind:
        callbacks.append(Quantization(by_kind["quantization"], input_shape, log))
    regs = [p for p in policies if p.kind == "regularization"]
    callbacks += [Regularization(p, i, epochs) for i, p in enumerate(regs)]
    return callbacks


def check_layers(callbacks: Sequence[Callback], model: nn.Module) -> None:
    """Every layer name the policies use exists in ``model`` (what each policy checks when it
    first acts, checked before anything is trained: ``kdistill distiller --dry-run``)."""
    for cb in callbacks:
        check = getattr(cb, "check", None)
        if check is not None:
            check(model)


def structure_record(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """What a model file must record to rebuild the student's current structure (pruned channel
    counts; the fake-quantized graph's settings), for ``ModelSpec.extra``."""
    record: dict[str, Any] = {}
    # The latest structural change holds every layer's current shape (channel pruning may step
    # after a pruning policy removed its zeroed filters, or before).
    changed = [
        (cb.changed_at, i, cb.shapes)
        for i, cb in enumerate(callbacks)
        if isinstance(cb, (ChannelPruning, UnstructuredPruning, Thinning)) and cb.shapes is not None
    ]
    if changed:
        record["layer_shapes"] = max(changed, key=lambda c: c[:2])[2]
    for cb in callbacks:
        if isinstance(cb, Quantization) and cb.prepared:
            record["qat"] = {k: getattr(cb.policy, k) for k in (*QUANT_SETTINGS, "overrides")}
        structure = getattr(cb, "structure", None)  # the language-model callbacks say theirs
        if callable(structure):
            record.update(structure())
    return record


def quantization_policy(callbacks: Sequence[Callback]) -> QuantizationPolicy | None:
    """The policy of the QAT callback once it has prepared the student, else ``None``."""
    return next(
        (cb.policy for cb in callbacks if isinstance(cb, Quantization) and cb.prepared), None
    )


def compression_report(callbacks: Sequence[Callback], student: nn.Module) -> dict[str, Any]:
    """What the compression policies did, for the run record (empty without policies)."""
    report: dict[str, Any] = {}
    for cb in callbacks:
        describe = getattr(cb, "report", None)  # the language-model callbacks say theirs
        if callable(describe):
            report.update(describe(student))
        if isinstance(cb, ChannelPruning):
            report["channel_pruning"] = {
                "ratio": cb.policy.ratio,
                "steps": cb.steps_done,
                "params_before": cb.params_before,
                "params_after": sum(p.numel() for p in student.parameters()),
            }
        elif isinstance(cb, Quantization) and cb.prepared and cb.layers is not None:
            report["quantization"] = {
                "layers": {
                    n: "fp32" if s is None else f"w{s['weight_bits']}a{s['activation_bits']}"
                    for n, s in cb.layers.items()
                },
                "packed_weight_bytes": quantization.packed_size_bytes(student, cb.layers),
            }
        elif isinstance(cb, Thinning) and cb.done:
            report.setdefault("thinning", []).append(
                {"structure": cb.policy.structure, "epochs": list(cb.done)}
            )
        elif isinstance(cb, UnstructuredPruning):
            names = cb.pruner.param_names if cb.pruner is not None else None
            threshold = cb.policy.schedule == "threshold"
            entry = {
                "target_sparsity": None if threshold else cb.policy.target_sparsity,
                **({"threshold": cb.policy.threshold} if threshold else {}),
                "structure": cb.policy.structure,
                **pruning.sparsity_report(student, names),
            }
            if cb.removed:
                entry["removed"] = True
            # several pruning policies (Distiller schedules have one per group of layers)
            report.setdefault("pruning_policies", []).append(entry)
    policies = report.pop("pruning_policies", [])
    if len(policies) == 1:
        report["pruning"] = policies[0]
    elif policies:
        names = [n for cb in callbacks if isinstance(cb, UnstructuredPruning) and cb.pruner
                 for n in cb.pruner.param_names]  # fmt: skip
        report["pruning"] = {**pruning.sparsity_report(student, names), "policies": policies}
    return report
