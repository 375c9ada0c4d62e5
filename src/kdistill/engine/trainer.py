"""The training loop: short and explicit, read it top to bottom in :meth:`Trainer.fit`.

The trainer knows only that the *objective* maps a batch to a ``DistillerOutput`` (student
output, ``LossOutput``, optional teacher output) and that ``objective.student`` is the network
being trained. Teachers, losses and compression plug in around it: the first through the
objective, the others through :class:`Callback` hooks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from kdistill.data.loader import BatchLoader
from kdistill.engine.metrics import ClassificationMeter
from kdistill.teachers.frozen import logits_of


class TrainingError(RuntimeError):
    """Training cannot go on; the last good checkpoint is intact."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or Inf."""


class CollapseError(TrainingError):
    """The student predicts (almost) one class for everything."""


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
    """

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    epoch_times: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        fields = {k: data[k] for k in ("epoch", "step", "best_score", "best_epoch", "wall_time_s")}
        return cls(**fields, epoch_times=list(data["epoch_times"]))


class Callback:
    """Hooks into the loop; override what you need. Compression schedules are callbacks.

    A callback that keeps state across epochs returns it from :meth:`state_dict` (tensors and
    plain Python values only) so that resuming restores it.
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def extra_loss(self, trainer: Trainer) -> Mapping[str, tuple[Tensor, float]]:
        """Extra loss terms for this step: ``name -> (unweighted value, weight)``."""
        return {}

    def on_step_end(self, trainer: Trainer, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def on_eval_start(self, trainer: Trainer) -> None:
        """Before the student is evaluated: nothing evaluation does may change the model."""

    def on_eval_end(self, trainer: Trainer) -> None: ...

    def on_restore(self, trainer: Trainer) -> None:
        """After :meth:`load_state_dict` on resume, before the weights are loaded: give the
        student the architecture the checkpoint was saved from (e.g. pruned channels)."""

    def model_extra(self) -> dict[str, Any]:
        """What a model file must record to rebuild the student's current architecture."""
        return {}

    def summary_extra(self, trainer: Trainer) -> dict[str, Any]:
        """Entries for the run's ``summary.json`` (under ``compression``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class _EpochSums:
    """Running sums of the training metrics of one epoch."""

    samples: int = 0
    correct: int = 0
    agree: int = 0
    agree_samples: int = 0
    parts: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        n: int,
        logits: Tensor,
        targets: Tensor,
        values: Mapping[str, float],
        teacher_pred: Tensor | None,
    ) -> None:
        self.samples += n
        pred = logits.detach().argmax(dim=1)
        self.correct += int((pred == targets).sum())
        for key, value in values.items():
            self.parts[key] = self.parts.get(key, 0.0) + value * n
        if teacher_pred is not None:
            self.agree += int((pred == teacher_pred).sum())
            self.agree_samples += n

    def result(self) -> dict[str, float]:
        """Means over the epoch, over every process of a data-parallel run."""
        from kdistill.engine.distributed import all_reduce_sum

        keys = sorted(self.parts)
        totals = all_reduce_sum(
            [float(self.samples), float(self.correct), float(self.agree), float(self.agree_samples)]
            + [self.parts[k] for k in keys],
            torch.device("cpu"),
        )
        samples, correct, agree, agree_samples = totals[:4]
        n = max(1.0, samples)
        out = {
            f"loss_{k}" if k != "total" else "loss": v / n
            for k, v in zip(keys, totals[4:], strict=True)
        }
        out["top1"] = correct / n
        if agree_samples:
            out["agreement"] = agree / agree_samples
        return out


class Trainer:
    """Runs epochs of an objective, evaluates, records and checkpoints.

    Args:
        objective: ``objective(inputs, targets, sample_ids=, views=) -> DistillerOutput`` with a
            ``student`` attribute and ``set_epoch(epoch)``.
        optimizer: over the objective's trainable parameters. Each param group's ``lr`` at
            construction is its peak lr; the schedule scales it every step.
        train_loader: training batches.
        epochs: total epochs.
        lr_factor: ``step -> multiplier`` of the peak lr.
        eval_loaders: split name -> loader, evaluated after every epoch (e.g. ``"test"``, ``"val"``).
        device: where the student lives.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        grad_clip: max global gradient norm, or ``None``.
        grad_accumulation: batches per optimizer step.
        callbacks: loop hooks.
        on_collapse: ``"warn"``, ``"stop"`` or ``"ignore"`` when the student predicts one class.
        save_checkpoint: called after every epoch as ``save_checkpoint(trainer, epoch, is_best)``.
        log_epoch: called with each epoch's record (writes metrics files).
        progress: show a progress bar per epoch.
        log: where human-readable lines go.
        teacher_predictor: ``inputs -> teacher predictions`` for student-teacher agreement on
            the eval splits (computed once per split for a frozen teacher).
        teacher_is_frozen: the teacher never changes, so its eval predictions can be reused.
        num_classes: classes of the task (for collapse detection).
    """

    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: BatchLoader,
        *,
        epochs: int,
        lr_factor: Callable[[int], float],
        eval_loaders: Mapping[str, BatchLoader],
        num_classes: int,
        device: torch.device,
        precision: str = "fp32",
        grad_clip: float | None = None,
        grad_accumulation: int = 1,
        callbacks: Sequence[Callback] = (),
        on_collapse: str = "warn",
        save_checkpoint: Callable[[Trainer, int, bool], None] | None = None,
        log_epoch: Callable[[dict[str, Any], int], None] | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        teacher_predictor: Callable[[Tensor], Tensor] | None = None,
        teacher_is_frozen: bool = True,
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        data_parallel: bool = False,
        sync_batchnorm: bool = False,
    ) -> None:
        self.objective = objective
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.epochs = epochs
        self.lr_factor = lr_factor
        self.eval_loaders = dict(eval_loaders)
        self.num_classes = num_classes
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip
        self.grad_accumulation = grad_accumulation
        self.callbacks = list(callbacks)
        self.on_collapse = on_collapse
        self.save_checkpoint = save_checkpoint
        self.log_epoch = log_epoch
        self.progress = progress
        self.log = log
        self.teacher_predictor = teacher_predictor
        self.teacher_is_frozen = teacher_is_frozen
        self.optimizer_factory = optimizer_factory
        self.data_parallel = data_parallel
        self.sync_batchnorm = sync_batchnorm
        if data_parallel:
            objective.student = self._wrap(objective.student)
        self.state = TrainState()
        self._peak_lrs = [group["lr"] for group in optimizer.param_groups]
        self._teacher_preds: dict[str, list[Tensor]] = {}

    @property
    def student(self) -> nn.Module:
        """The network being trained, without its DistributedDataParallel wrapper."""
        student = self.objective.student
        return student.module if isinstance(student, DistributedDataParallel) else student

    def _wrap(self, student: nn.Module) -> nn.Module:
        """Only the student is data-parallel: the teacher has no gradients to synchronize."""
        if self.sync_batchnorm:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=device_ids)

    def replace_student(self, student: nn.Module) -> None:
        """Swap the network being trained (compression changes its structure), keeping its
        train/eval mode, and rebuild the optimizer over the new parameters."""
        student.to(self.device)
        student.train(self.objective.training)
        self.objective.student = self._wrap(student) if self.data_parallel else student
        self.rebuild_optimizer()

    def rebuild_optimizer(self) -> None:
        """A fresh optimizer over the objective's current parameters (same hyper-parameters;
        momentum restarts), at the learning rate the schedule gives for the current step."""
        if self.optimizer_factory is None:
            raise TrainingError("this trainer cannot rebuild its optimizer (no optimizer_factory)")
        self.optimizer = self.optimizer_factory(list(self.objective.parameters()))
        self._peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._set_lr()

    def set_teacher_predictions(self, split: str, per_batch: list[Tensor]) -> None:
        """Reuse a frozen teacher's predictions on an eval split (one tensor per batch, in the
        loader's order) instead of running the teacher again."""
        self._teacher_preds[split] = per_batch

    # ------------------------------------------------------------------------- the loop

    def fit(self) -> TrainState:
        """Train from ``self.state.epoch`` to ``self.epochs``; returns the final state."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        for epoch in range(self.state.epoch, self.epochs):
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            started = time.perf_counter()
            train_metrics = self.train_epoch(epoch)
            train_time = time.perf_counter() - started
            started = time.perf_counter()
            evals = {name: self.evaluate(name) for name in self.eval_loaders}
            eval_time = time.perf_counter() - started
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train": train_metrics,
                **evals,
                "epoch_time_s": train_time,
                "eval_time_s": eval_time,
            }
            self._check_collapse(epoch, evals)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, record)
            score = (
                evals["val" if "val" in evals else "test"]["top1"]
                if evals
                else -train_metrics["loss"]
            )
            is_best = score > self.state.best_score
            if is_best:
                self.state.best_score, self.state.best_epoch = score, epoch
            self.state.epoch = epoch + 1
            self.state.epoch_times.append(train_time)
            self.state.wall_time_s += train_time + eval_time
            if self.log_epoch is not None:
                self.log_epoch(record, self.state.step)
            if self.save_checkpoint is not None:
                self.save_checkpoint(self, epoch, is_best)
            self.log(self._epoch_line(record))
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.state

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns the epoch's mean loss parts and accuracy."""
        self.objective.train()
        self.objective.set_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        sums = _EpochSums()
        n_batches = len(self.train_loader)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        self.optimizer.zero_grad(set_to_none=True)
        with bar:
            for i, batch in enumerate(self.train_loader):
                self._set_lr()
                with self._autocast():
                    out = self.objective(
                        batch.inputs, batch.targets, sample_ids=batch.sample_ids, views=batch.views
                    )
                total = out.loss.total
                values = out.loss.as_floats()
                for cb in self.callbacks:
                    for name, (term, weight) in cb.extra_loss(self).items():
                        total = total + weight * term
                        values[name] = float(term.detach())
                values["total"] = float(total.detach())
                if not math.isfinite(values["total"]):
                    raise NonFiniteLossError(
                        f"the loss became {values['total']} at epoch {epoch + 1}, step {i + 1} of "
                        f"{n_batches} (parts: {_format_parts(values)}). Training stopped; the last "
                        "good checkpoint is intact. Usual fixes: a lower optim.lr, "
                        "optim.grad_clip: 1.0, or a lower kd.temperature."
                    )
                (total / self.grad_accumulation).backward()
                if (i + 1) % self.grad_accumulation == 0 or i + 1 == n_batches:
                    self._optimizer_step()
                teacher_pred = out.teacher.predictions() if out.teacher is not None else None
                sums.add(
                    len(batch.targets), out.student.logits, batch.targets, values, teacher_pred
                )
                bar.update(1)
                if self.progress and (i % 10 == 0 or i + 1 == n_batches):
                    bar.set_postfix(
                        loss=f"{values['total']:.3f}",
                        acc=f"{sums.correct / max(1, sums.samples):.1%}",
                    )
        return sums.result()

    def _optimizer_step(self) -> None:
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        for cb in self.callbacks:
            cb.on_step_end(self, self.state.step)

    def _set_lr(self) -> None:
        factor = self.lr_factor(self.state.step)
        for group, peak in zip(self.optimizer.param_groups, self._peak_lrs, strict=True):
            group["lr"] = peak * factor

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------- evaluation

    def evaluate(self, name: str) -> dict[str, float]:
        """Metrics of the student on the eval split ``name`` (and agreement with the teacher)."""
        loader = self.eval_loaders[name]
        student = self.student
        was_training = student.training
        for cb in self.callbacks:
            cb.on_eval_start(self)
        student.eval()
        meter = ClassificationMeter(self.num_classes)
        reuse = name in self._teacher_preds and self.teacher_is_frozen
        teacher_preds: list[Tensor] = self._teacher_preds.get(name, []) if reuse else []
        with torch.inference_mode(), self._autocast():
            for b, batch in enumerate(loader):
                logits = logits_of(student(batch.inputs)).float()
                loss_sum = float(
                    torch.nn.functional.cross_entropy(logits, batch.targets, reduction="sum")
                )
                teacher_pred = None
                if self.teacher_predictor is not None:
                    if not reuse:
                        teacher_preds.append(self.teacher_predictor(batch.inputs))
                    teacher_pred = teacher_preds[b]
                meter.update(logits, batch.targets, loss_sum, teacher_pred)
        if self.teacher_predictor is not None:
            self._teacher_preds[name] = teacher_preds
        student.train(was_training)
        for cb in self.callbacks:
            cb.on_eval_end(self)
        return meter.result()

    # ------------------------------------------------------------------------- health

    def _check_collapse(self, epoch: int, evals: Mapping[str, Mapping[str, float]]) -> None:
        if self.on_collapse == "ignore" or self.num_classes < 3 or not evals:
            return
        split, metrics = next(iter(evals.items()))
        share = metrics["top_class_share"]
        if share < 0.9:
            return
        message = (
            f"after epoch {epoch + 1} the student predicts one class for {share:.0%} of the {split} "
            f"samples ({split} top-1 {metrics['top1']:.1%}): it has collapsed. In distillation this "
            "usually means the T^2-scaled soft loss pushed too hard for the learning rate: try a "
            "lower optim.lr, optim.grad_clip: 1.0, or a lower kd.temperature (a very confident "
            "teacher gives large gradients)."
        )
        if self.on_collapse == "stop":
            raise CollapseError(message + " Stopped (train.on_collapse=stop).")
        self.log(f"WARNING: {message}")

    def _epoch_line(self, record: Mapping[str, Any]) -> str:
        train = record["train"]
        parts = [
            f"epoch {record['epoch'] + 1}/{self.epochs}",
            f"loss {train['loss']:.4f}",
            f"train {train['top1']:.2%}",
        ]
        for name in self.eval_loaders:
            m = record[name]
            parts.append(f"{name} {m['top1']:.2%}")
            if "agreement" in m:
                parts.append(f"agree {m['agreement']:.1%}")
        parts.append(f"{record['epoch_time_s']:.2f}s")
        return "  ".join(parts)


def _format_parts(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items() if not k.endswith("_weighted"))


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
