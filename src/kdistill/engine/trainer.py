"""The training loop: short and explicit, read it top to bottom in :meth:`Trainer.fit`.

The trainer knows an :class:`~kdistill.objectives.Objective` (a batch in, the student's output
and a ``LossOutput`` out), an optimizer built over the objective's parameters, the loaders, how
the loop runs (:class:`Loop`) and its callbacks. Teachers and losses plug in through the
objective; compression, checkpoints, logs and health checks through :class:`Callback` s, the
one extension mechanism. Saving and restoring are :meth:`Trainer.state_dict` and
:meth:`Trainer.load_state_dict`, which gather the objective's and the callbacks' states.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdistill.engine.evaluation import Evaluation, evaluate
from kdistill.objectives.protocol import Objective
from kdistill.types import IGNORE_INDEX, Batch, DistillerOutput


class TrainingError(RuntimeError):
    """Training cannot go on; the last good checkpoint is intact."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or Inf."""


class CollapseError(TrainingError):
    """The student predicts (almost) one class for everything, or does no better than chance."""


class Loader(Protocol):
    """Batches of one split: iterable, sized, and told the epoch (order and views depend on it)."""

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def constant_lr(step: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Loop:
    """How the loop runs.

    Attributes:
        epochs: total epochs.
        device: where the student lives.
        num_classes: classes of the task (metrics).
        lr_factor: ``step -> multiplier`` of each param group's peak lr (the lr the optimizer
            factory gives it); a pure function of the step, so resuming needs only the step.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        grad_clip: max global gradient norm, or ``None``.
        grad_accumulation: batches per optimizer step.
        data_parallel: wrap the student in ``DistributedDataParallel`` (torch.distributed).
        sharded: with ``data_parallel``, shard the student with FSDP2 instead of replicating it
            (:func:`~kdistill.engine.distributed.shard_model`).
        sync_batchnorm: with ``data_parallel``, BatchNorm statistics over the global batch.
        selectable_from: the first epoch that may be chosen best (the run's compression has
            given the student its final form; earlier epochs are never "best").
    """

    epochs: int
    device: torch.device
    num_classes: int
    lr_factor: Callable[[int], float] = constant_lr
    precision: str = "fp32"
    grad_clip: float | None = None
    grad_accumulation: int = 1
    data_parallel: bool = False
    sync_batchnorm: bool = False
    sharded: bool = False
    selectable_from: int = 0


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint.

    Attributes:
        epoch: the next epoch to run (0-based); equals the number of finished epochs.
        step: optimizer steps taken.
        best_score: best selection metric so far (val top-1 if there is a val split, else test).
        best_epoch: the epoch that reached it.
        epoch_times: training seconds of each finished epoch.
        wall_time_s: seconds spent in finished epochs, training and evaluation.
        history: each finished epoch's record (what ``metrics.jsonl`` holds).
    """

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    epoch_times: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def finish_epoch(self, record: dict[str, Any], score: float) -> bool:
        """Account for a finished epoch; returns whether it is the best so far."""
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.best_epoch = score, record["epoch"]
        self.epoch = record["epoch"] + 1
        self.epoch_times.append(record["epoch_time_s"])
        self.wall_time_s += record["epoch_time_s"] + record["eval_time_s"]
        self.history.append(record)
        return is_best

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class Callback:
    """Hooks into the loop; override what you need.

    Compression policies, checkpoints, metric files, the console and health checks are
    callbacks. A callback that keeps state across epochs returns it from :meth:`state_dict`
    (tensors and plain Python values only) so that resuming restores it.
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def extra_loss(self, trainer: Trainer) -> Mapping[str, tuple[Tensor, float]]:
        """Extra loss terms for this step: ``name -> (unweighted value, weight)``."""
        return {}

    def on_step_end(self, trainer: Trainer, step: int) -> None: ...

    def on_eval_start(self, trainer: Trainer) -> None:
        """Before the student is evaluated: nothing evaluation does may change the model."""

    def on_eval_end(self, trainer: Trainer, split: str, evaluation: Evaluation) -> None:
        """After a split is evaluated; may add entries to ``evaluation.metrics``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class _EpochSums:
    """Running sums of one epoch's training metrics, kept on the device in one vector: a step
    adds to it with a handful of kernels and no host synchronization; reading it (once per
    logging interval and at the end of the epoch) is the only synchronization.

    Loss parts are summed unweighted; their weighted values are the sums times the weights,
    which are constant within an epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples = 0
        self.keys: list[str] = []
        self.weights: dict[str, float] = {}
        self.sums: Tensor | None = None

    def add(self, out: DistillerOutput, targets: Tensor, extra: Mapping[str, Tensor]) -> None:
        pred = out.student.predicted()
        if out.loss.count is None:  # one prediction per sample
            n = int(targets.shape[0])
            kept: Tensor | None = None
        else:  # a language model's tokens: the positions that take a loss
            kept = targets != IGNORE_INDEX
            n = int(out.loss.count)
        self.samples += n
        values = {"loss": out.loss.total.detach()}
        values.update({f"loss_{k}": v.detach() for k, v in out.loss.parts.items()})
        values.update({f"loss_{k}": v.detach() for k, v in extra.items()})
        right = pred == targets
        values["top1"] = (right if kept is None else right & kept).sum().double() / max(n, 1)
        if out.teacher is not None:
            same = pred == out.teacher.predictions()
            values["agreement"] = (same if kept is None else same & kept).sum().double() / max(n, 1)
        self.weights.update({f"loss_{k}": w for k, w in out.loss.weights.items()})
        keys = list(values)
        step = torch.stack([v.to(torch.float64) for v in values.values()]) * n
        if self.sums is None or keys != self.keys:
            if self.sums is not None:  # a new part appeared: keep what was summed so far
                old = dict(zip(self.keys, self.sums.unbind(), strict=True))
                step = step + torch.stack([old.get(k, step.new_zeros(())) for k in keys])
            self.keys, self.sums = keys, step
        else:
            self.sums = self.sums + step

    def means(self, *, across_processes: bool = False) -> dict[str, float]:
        """Means over the samples so far, with the weighted loss parts (``loss_X_weighted``)."""
        from kdistill.engine.distributed import all_reduce_sum

        values = self.sums.tolist() if self.sums is not None else []
        samples = float(self.samples)
        if across_processes:
            totals = all_reduce_sum([samples, *values], torch.device("cpu"))
            samples, values = totals[0], totals[1:]
        n = max(1.0, samples)
        out = {k: v / n for k, v in zip(self.keys, values, strict=True)}
        for key, weight in self.weights.items():
            if key in out:
                out[f"{key}_weighted"] = out[key] * weight
        return out


class Trainer:
    """Runs epochs of an objective, evaluates, and calls its callbacks.

    Args:
        objective: what is trained (:class:`~kdistill.objectives.Objective`).
        optimizer_factory: ``parameters -> optimizer``; called at construction and again when
            compression replaces the student. Each param group's ``lr`` is its peak lr.
        train_loader: training batches.
        eval_loaders: split name -> loader, evaluated after every epoch (``"val"``, ``"test"``);
            the selection metric is val top-1 when there is a val split, else test top-1,
            from ``loop.selectable_from`` on.
        loop: how the loop runs (:class:`Loop`).
        callbacks: loop hooks, called in order.
    """

    def __init__(
        self,
        objective: Objective,
        optimizer_factory: OptimizerFactory,
        train_loader: Loader,
        eval_loaders: Mapping[str, Iterable[Batch]],
        loop: Loop,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.objective = objective
        self.optimizer_factory = optimizer_factory
        self.train_loader = train_loader
        self.eval_loaders = dict(eval_loaders)
        self.loop = loop
        self.callbacks = list(callbacks)
        if loop.data_parallel:
            objective.student = self._wrap(objective.student)
        self.state = TrainState()
        self.optimizer = optimizer_factory(list(objective.parameters()))
        self._peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.epoch_sums = _EpochSums(loop.device)
        # a sharded student's whole weights and optimizer state, gathered by every process at
        # the end of an epoch (a collective) for the first process to write
        self._gathered: tuple[dict[str, Any], dict[str, Any]] | None = None

    @property
    def student(self) -> nn.Module:
        """The network being trained, without its DistributedDataParallel wrapper."""
        student = self.objective.student
        return student.module if isinstance(student, DistributedDataParallel) else student

    def _wrap(self, student: nn.Module) -> nn.Module:
        """Only the student is data-parallel: the teacher has no gradients to synchronize."""
        if self.loop.sharded:
            from kdistill.engine.distributed import shard_model

            return shard_model(student)
        if self.loop.sync_batchnorm:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        device = self.loop.device
        return DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )

    def replace_student(self, student: nn.Module) -> None:
        """Swap the network being trained (compression changes its structure), keeping its
        train/eval mode, and rebuild the optimizer over the new parameters (momentum restarts,
        at the learning rate the schedule gives for the current step)."""
        if self.loop.sharded:
            raise TrainingError("a sharded (FSDP2) student cannot be replaced by compression")
        student.to(self.loop.device)
        student.train(self.student.training)
        self.objective.student = self._wrap(student) if self.loop.data_parallel else student
        self.optimizer = self.optimizer_factory(list(self.objective.parameters()))
        self._peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._set_lr()

    # ------------------------------------------------------------------------- the loop

    def fit(self) -> TrainState:
        """Train from ``self.state.epoch`` to ``loop.epochs``; returns the final state."""
        self._call("on_fit_start")
        if self.state.best_epoch < self.loop.selectable_from:
            # resumed from a checkpoint whose best came before the final form: not a candidate
            self.state.best_score = -math.inf
        for epoch in range(self.state.epoch, self.loop.epochs):
            self._call("on_epoch_start", epoch)
            started = time.perf_counter()
            train_metrics = self.train_epoch(epoch)
            train_time = time.perf_counter() - started
            started = time.perf_counter()
            evals = {name: self.evaluate(name).metrics for name in self.eval_loaders}
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": self.state.step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train": train_metrics,
                **evals,
                "epoch_time_s": train_time,
                "eval_time_s": time.perf_counter() - started,
            }
            selection = evals.get("val", evals.get("test"))
            if self.loop.sharded:
                self._gather()
            score = selection["top1"] if selection else -train_metrics["loss"]
            self.state.finish_epoch(
                record, score if epoch >= self.loop.selectable_from else -math.inf
            )
            self._call("on_epoch_end", epoch, record)
        self._call("on_fit_end")
        return self.state

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns the epoch's mean loss parts and accuracy."""
        self.objective.train()
        self.objective.set_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        self.epoch_sums = _EpochSums(self.loop.device)
        n_batches = len(self.train_loader)
        self.optimizer.zero_grad(set_to_none=True)
        counted: Tensor | None = None  # the items of this step's counted micro-batches
        for i, batch in enumerate(self.train_loader):
            self._set_lr()
            with self.autocast():
                out = self.objective(
                    batch.inputs, batch.targets, sample_ids=batch.sample_ids, views=batch.views
                )
            total = out.loss.total
            extra: dict[str, Tensor] = {}
            for cb in self.callbacks:
                for name, (term, weight) in cb.extra_loss(self).items():
                    total = total + weight * term
                    extra[name] = term
            if not bool(torch.isfinite(total)):  # the one host synchronization of a step
                parts = {**out.loss.parts, **extra}
                raise NonFiniteLossError(
                    f"the loss became {float(total.detach())} at epoch {epoch + 1}, step {i + 1} "
                    f"of {n_batches} (parts: {_format_parts(parts)}). Training stopped; the last "
                    "good checkpoint is intact. Usual fixes: a lower optim.lr, "
                    "optim.grad_clip: 1.0, or a lower kd.temperature."
                )
            if out.loss.count is None:  # a mean over samples: micro-batches weigh alike
                (total / self.loop.grad_accumulation).backward()
            else:  # a mean over a varying count: summed here, divided by the step's total
                (total * out.loss.count).backward()
                count = out.loss.count.detach().double()
                counted = count if counted is None else counted + count
            if (i + 1) % self.loop.grad_accumulation == 0 or i + 1 == n_batches:
                if counted is not None:
                    self._divide_gradients(counted)
                    counted = None
                self._optimizer_step()
            self.epoch_sums.add(out, batch.targets, extra)
            self._call("on_step_end", self.state.step)
        return self.epoch_sums.means(across_processes=True)

    def _divide_gradients(self, counted: Tensor) -> None:
        """Gradients of the sums of counted micro-batches, divided by the step's count over
        every process (DistributedDataParallel has averaged them over processes already, hence
        the world size): the gradient of the mean over the global batch's kept items."""
        scale = 1.0
        total = counted
        if self.loop.data_parallel:
            total = counted.clone().to(self.loop.device)
            torch.distributed.all_reduce(total)
            scale = float(torch.distributed.get_world_size())
        factor = scale / max(float(total), 1.0)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(factor)

    def _average_objective_gradients(self) -> None:
        """DistributedDataParallel averages the student's gradients across processes; the
        objective's own parameters (adapters, embedding heads, a jointly trained teacher) are
        averaged here, so every process takes the same step."""
        in_student = {id(p) for p in self.objective.student.parameters()}
        grads = [
            p.grad
            for p in self.objective.parameters()
            if id(p) not in in_student and p.grad is not None
        ]
        world = torch.distributed.get_world_size()
        for grad in grads:
            torch.distributed.all_reduce(grad)
            grad.div_(world)

    def _optimizer_step(self) -> None:
        if self.loop.data_parallel:
            self._average_objective_gradients()
        if self.loop.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.loop.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _set_lr(self) -> None:
        factor = self.loop.lr_factor(self.state.step)
        for group, peak in zip(self.optimizer.param_groups, self._peak_lrs, strict=True):
            group["lr"] = peak * factor

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.loop.precision == "bf16":
            return torch.autocast(device_type=self.loop.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, split: str) -> Evaluation:
        """The student's metrics on an eval split (callbacks may add to them)."""
        self._call("on_eval_start")
        evaluation = evaluate(
            self.student, self.eval_loaders[split], self.loop.num_classes, autocast=self.autocast()
        )
        self._call("on_eval_end", split, evaluation)
        return evaluation

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------------- state

    def _callback_keys(self) -> list[str]:
        """``Name:n`` for the n-th callback of each class: stable when callbacks without state
        (a user's logger, say) come or go between a run and its resume."""
        seen: dict[str, int] = {}
        keys = []
        for cb in self.callbacks:
            name = type(cb).__name__
            keys.append(f"{name}:{seen.get(name, 0)}")
            seen[name] = seen.get(name, 0) + 1
        return keys

    def _gather(self) -> None:
        from kdistill.engine.distributed import full_model_state, full_optimizer_state

        student = self.objective.student
        self._gathered = (
            full_model_state(student),
            full_optimizer_state(student, self.optimizer),
        )

    def student_state_dict(self) -> dict[str, Any]:
        """The student's whole weights (a sharded student's as gathered after the last epoch)."""
        if self.loop.sharded:
            assert self._gathered is not None, "gathered at the end of every epoch"
            return self._gathered[0]
        return self.student.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs besides the student's weights: loop position,
        optimizer, RNG states, the objective's extra state and the callbacks' states."""
        callbacks = {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks)}
        optimizer = self._gathered[1] if self.loop.sharded and self._gathered else None
        return {
            "train_state": self.state.to_dict(),
            "optimizer": optimizer if optimizer is not None else self.optimizer.state_dict(),
            "rng": rng_state(),
            "objective": self.objective.extra_state(),
            "callbacks": {k: v for k, v in callbacks.items() if v},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the student must already have the saved structure)."""
        keys = self._callback_keys()
        unknown = sorted(set(state["callbacks"]) - set(keys))
        if unknown:
            raise TrainingError(
                f"the checkpoint holds state of callbacks {', '.join(unknown)}, which this run "
                "does not have (was it made with other policies or train.callbacks?)"
            )
        for key, cb in zip(keys, self.callbacks, strict=True):
            if key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][key])
        self.objective.load_extra_state(state["objective"])
        if self.loop.sharded:  # a whole state keyed by parameter names, sharded on loading
            from kdistill.engine.distributed import load_full_optimizer_state

            load_full_optimizer_state(self.objective.student, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.state = TrainState.from_dict(state["train_state"])
        set_rng_state(state["rng"])


def _format_parts(values: Mapping[str, Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in values.items())


def rng_state() -> dict[str, Tensor | list[Tensor]]:
    """Global RNG states (dropout and anything else drawing from torch's default generators)."""
    state: dict[str, Tensor | list[Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
