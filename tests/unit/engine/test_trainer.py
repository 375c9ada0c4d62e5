"""The loop contract on tiny synthetic data: objectives, state dicts, checkpoints, callbacks,
and how often a training step synchronizes with the host."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from kdistill import Batch, DistillationLoss, Distiller, Supervised
from kdistill.engine import (
    Agreement,
    Callback,
    Checkpointer,
    CollapseError,
    CollapseGuard,
    Evaluation,
    Loop,
    Trainer,
)
from kdistill.engine.callbacks import collapse_reason, not_learned
from kdistill.engine.checkpoint import CheckpointError
from kdistill.files import LATEST, MODEL, STATE
from kdistill.models import ModelSpec
from kdistill.objectives import Objective

SPEC = ModelSpec("mlp", {"hidden": [8]}, 3, (6,))


class Loader:
    """Fixed batches of a 3-class problem; the epoch is ignored."""

    def __init__(self, n=48, batch=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 6, generator=g)
        y = x[:, :3].argmax(dim=1)
        self.batches = [
            Batch(x[i : i + batch], y[i : i + batch], torch.arange(i, min(i + batch, n)), None)
            for i in range(0, n, batch)
        ]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass


def make_trainer(callbacks=(), epochs=3, objective=None):
    torch.manual_seed(0)
    objective = objective or Supervised(SPEC.build_architecture())
    return Trainer(
        objective,
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        Loader(),
        {"test": Loader(seed=1)},
        Loop(epochs=epochs, device=torch.device("cpu"), num_classes=3),
        callbacks,
    )


def test_objectives_implement_the_contract():
    student = SPEC.build_architecture()
    teacher = SPEC.build_architecture()
    for objective in (Supervised(student), Distiller(student, teacher, DistillationLoss())):
        assert isinstance(objective, Objective)


def test_fit_records_history_and_selects_the_best_epoch():
    trainer = make_trainer()
    state = trainer.fit()
    assert state.epoch == 3 and len(state.history) == 3 and state.step == 9
    assert [r["epoch"] for r in state.history] == [0, 1, 2]
    best = max(range(3), key=lambda e: state.history[e]["test"]["top1"])
    assert state.history[state.best_epoch]["test"]["top1"] == state.history[best]["test"]["top1"]
    assert set(state.history[0]["train"]) >= {"loss", "loss_student", "top1"}


def test_no_epoch_before_the_students_final_form_is_chosen_best():
    """``Loop.selectable_from``: a compressed run's best epoch is one with its final form,
    also when a resumed state chose an earlier one (a checkpoint of an older rule)."""
    trainer = make_trainer(epochs=4)
    trainer.loop = replace(trainer.loop, selectable_from=2)
    state = trainer.fit()
    scores = [h["test"]["top1"] for h in state.history]
    assert state.best_epoch == max((2, 3), key=lambda e: scores[e])
    assert state.best_score == max(scores[2:])
    resumed = make_trainer(epochs=4)
    resumed.loop = replace(resumed.loop, epochs=2)
    resumed.fit()
    assert resumed.state.best_epoch in (0, 1)
    resumed.loop = replace(resumed.loop, epochs=4, selectable_from=3)
    resumed.state.best_score = 2.0  # no epoch could beat it: the old choice must not stand
    assert resumed.fit().best_epoch == 3


def test_state_dict_round_trip_continues_exactly(tmp_path):
    whole = make_trainer(epochs=4)
    whole.fit()
    first = make_trainer(epochs=4)
    first.loop = Loop(epochs=2, device=torch.device("cpu"), num_classes=3)
    first.fit()
    state = first.state_dict()
    torch.save(state, tmp_path / "s.pt")  # the checkpoint format: plain tensors and values
    second = make_trainer(epochs=4)
    second.student.load_state_dict(first.student.state_dict())
    second.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    second.fit()
    for a, b in zip(whole.student.state_dict().values(), second.student.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert [h["test"] for h in second.state.history] == [h["test"] for h in whole.state.history]


def test_a_training_step_synchronizes_at_most_twice(monkeypatch):
    trainer = make_trainer(epochs=1)
    calls = {"n": 0}
    originals = {}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        originals[name] = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, **kwargs):
            calls["n"] += 1
            return originals[_name](self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []

    class Count(Callback):
        def on_step_end(self, trainer, step):
            counts.append(calls["n"])
            calls["n"] = 0

    trainer.callbacks.append(Count())
    teacher = SPEC.build_architecture()
    trainer.objective = Distiller(trainer.student, teacher, DistillationLoss(validate=False))
    calls["n"] = 0
    trainer.train_epoch(0)
    assert counts and max(counts) <= 2, counts


def test_checkpointer_keeps_the_newest_and_the_best(tmp_path):
    keeper = Checkpointer(tmp_path, keep=1, describe=lambda _: SPEC, info={"config_hash": "abc"})
    trainer = make_trainer([keeper], epochs=4)
    trainer.fit()
    latest = Checkpointer.latest(tmp_path)
    assert latest is not None and latest.epoch == 3 and latest.info == {"config_hash": "abc"}
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*"))
    best = f"epoch-{trainer.state.best_epoch:04d}"
    assert kept == sorted({"epoch-0003", best}) and latest.best.name == best
    state = latest.training_state()
    assert state["train_state"]["epoch"] == 4
    assert not list(tmp_path.rglob("*.tmp"))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_checkpoint_files_are_caught(tmp_path):
    trainer = make_trainer([Checkpointer(tmp_path, keep=1, describe=lambda _: SPEC)], epochs=2)
    trainer.fit()
    latest = Checkpointer.latest(tmp_path)
    for path in {latest.path, latest.best}:  # no older checkpoint to fall back to
        _flip_a_byte(path / STATE)
    with pytest.raises(CheckpointError, match=r"state.pt is corrupted.*--force"):
        Checkpointer.latest(tmp_path)
    (tmp_path / "checkpoints" / LATEST).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Checkpointer.latest(tmp_path)
    (tmp_path / "checkpoints" / LATEST).write_text(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError, match="malformed"):
        Checkpointer.latest(tmp_path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_that_checks_out(tmp_path):
    keeper = Checkpointer(tmp_path, keep=3, describe=lambda _: SPEC)
    trainer = make_trainer([keeper], epochs=4)
    trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("epoch-*"))[-3:] == [
        "epoch-0001",
        "epoch-0002",
        "epoch-0003",
    ]
    _flip_a_byte(root / "epoch-0003" / MODEL)
    (root / "epoch-0002" / STATE).unlink()
    fallback = Checkpointer.latest(tmp_path)
    assert fallback.epoch == 1 and fallback.path.name == "epoch-0001"
    assert len(fallback.skipped) == 2
    assert fallback.skipped[0].startswith("epoch-0003: ") and "corrupted" in fallback.skipped[0]
    assert fallback.skipped[1].startswith("epoch-0002: ") and "missing" in fallback.skipped[1]
    assert fallback.training_state()["train_state"]["epoch"] == 2
    # the resumed run writes its epochs again and the pointer forgets the abandoned ones
    resumed = make_trainer([Checkpointer(tmp_path, keep=3, describe=lambda _: SPEC)], epochs=4)
    resumed.load_state_dict(fallback.training_state())
    resumed.fit()
    again = Checkpointer.latest(tmp_path)
    assert again.epoch == 3 and again.skipped == ()


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    keeper = Checkpointer(tmp_path, keep=2, describe=lambda _: SPEC)
    trainer = make_trainer([keeper], epochs=1)
    trainer.fit()

    def broken_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    trainer.loop = Loop(epochs=2, device=torch.device("cpu"), num_classes=3)
    with pytest.raises(ValueError, match="No space left on device"):
        trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0000", LATEST]
    assert Checkpointer.latest(tmp_path).epoch == 0
    assert (root / "epoch-0000" / MODEL).is_file()


def test_training_state_never_unpickles_objects(tmp_path):
    keeper = Checkpointer(tmp_path, keep=2, describe=lambda _: SPEC)
    make_trainer([keeper], epochs=1).fit()
    checkpoint = Checkpointer.latest(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, checkpoint.path / STATE)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        checkpoint.training_state()


def test_agreement_compares_predictions():
    evaluation = Evaluation({"top1": 1.0}, torch.tensor([0, 1, 2, 2]))
    Agreement(reference={"test": torch.tensor([0, 1, 1, 2])}).on_eval_end(
        make_trainer(), "test", evaluation
    )
    assert evaluation.metrics["agreement"] == 0.75


@pytest.mark.parametrize(
    ("metrics", "collapsed", "not_yet_learned"),
    [
        # at chance, near-uniform predictions: a slow start; after the last epoch, a warning
        ({"top1": 0.10, "loss": 2.30, "top_class_share": 0.2, "majority_share": 0.1}, False, True),
        # at chance and confidently wrong: distillation collapse, at any epoch
        ({"top1": 0.10, "loss": 12.4, "top_class_share": 0.95, "majority_share": 0.1}, True, False),
        # at chance, one answer for every input: a dead network (the stock FMNIST recipe)
        ({"top1": 0.10, "loss": 2.33, "top_class_share": 1.0, "majority_share": 0.1}, True, False),
        # one class for most inputs, confidently
        ({"top1": 0.40, "loss": 5.0, "top_class_share": 0.6, "majority_share": 0.1}, True, False),
        # ... but not when the loss is that of a model still near uniform predictions
        ({"top1": 0.09, "loss": 2.6, "top_class_share": 0.6, "majority_share": 0.1}, False, True),
        # the same share is normal when that class is 40% of the data
        ({"top1": 0.40, "loss": 3.0, "top_class_share": 0.6, "majority_share": 0.4}, False, False),
        ({"top1": 0.90, "loss": 0.3, "top_class_share": 0.12, "majority_share": 0.1}, False, False),
    ],
)
def test_collapse_criteria(metrics, collapsed, not_yet_learned):
    assert (collapse_reason(metrics, 10) is not None) == collapsed
    assert (not_learned(metrics, 10) is not None) == not_yet_learned
    assert collapse_reason(metrics, 2) is None and not_learned(metrics, 2) is None  # 2 classes


def test_collapse_stops_or_warns():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1) + 0 * x.sum(1, keepdim=True)

    with pytest.raises(CollapseError, match=r"collapsed on the test split.*advice"):
        make_trainer(
            [CollapseGuard("stop", print, "advice")], objective=Supervised(Constant())
        ).fit()
    messages = []
    guard = CollapseGuard("warn", messages.append, "advice")
    make_trainer([guard], epochs=2, objective=Supervised(Constant())).fit()
    assert len(messages) == 2 and len(guard.warnings) == 1
