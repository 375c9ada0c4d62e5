"""Distiller: what it trains, what it saves, when it distills, and joint teacher training."""

import pytest
import torch
from torch import nn

from kdistill import DistillationLoss, Distiller, FrozenTeacher


def nets():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), nn.Sequential(
        nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def test_trainable_parameters_are_the_students():
    student, teacher = nets()
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.1))
    assert [id(p) for p in d.parameters()] == [id(p) for p in student.parameters()]
    assert [n for n, _ in d.named_parameters()] == [
        f"student.{n}" for n, _ in student.named_parameters()
    ]


def test_state_dict_is_the_students_and_loads_into_a_bare_student():
    student, teacher = nets()
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.1))
    sd = d.state_dict()
    assert list(sd) == list(student.state_dict())
    fresh = nets()[0]
    fresh.load_state_dict(sd)
    x = torch.randn(2, 4)
    torch.testing.assert_close(fresh(x), student(x))
    d.load_state_dict(nets()[0].state_dict())  # and back


def test_kd_start_epoch_gates_the_teacher():
    student, teacher = nets()
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.1), kd_start_epoch=2)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    for epoch in (0, 1):
        d.set_epoch(epoch)
        out = d(x, y)
        assert not d.kd_active and out.teacher is None and calls == []
        torch.testing.assert_close(out.loss.total, nn.functional.cross_entropy(student(x), y))
        assert out.loss.weights == {"student": 1.0}
    d.set_epoch(2)
    out = d(x, y)
    assert d.kd_active and len(calls) == 1 and set(out.loss.parts) == {"student", "distill"}
    assert out.teacher is not None and not out.teacher.logits.requires_grad


def test_training_loop_moves_only_the_student():
    student, teacher = nets()
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.5))
    opt = torch.optim.SGD(d.parameters(), lr=0.5)
    d.train()
    for _ in range(3):
        opt.zero_grad()
        d(torch.randn(8, 4), torch.randint(0, 3, (8,))).loss.total.backward()
        opt.step()
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())


def test_joint_mode_trains_the_teacher_on_its_labels_only():
    student, teacher = nets()
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.1, teacher_weight=0.5))
    names = [n for n, _ in d.named_parameters()]
    assert any(n.startswith("teacher.") for n in names)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    d.train()
    d(x, y).loss.total.backward()
    got = [p.grad.clone() for p in teacher.parameters()]
    teacher.zero_grad()
    (0.5 * nn.functional.cross_entropy(teacher(x), y)).backward()
    for g, p in zip(got, teacher.parameters()):
        torch.testing.assert_close(g, p.grad)
    assert list(d.state_dict()) == list(student.state_dict())


def test_joint_mode_refuses_a_frozen_teacher():
    student, teacher = nets()
    with pytest.raises(ValueError, match="teacher network itself"):
        Distiller(student, FrozenTeacher(teacher), DistillationLoss(4.0, 0.1, teacher_weight=0.5))


@pytest.mark.parametrize("start", [-1, 1.5, True])
def test_bad_start_epoch(start):
    student, teacher = nets()
    with pytest.raises(ValueError, match="kd_start_epoch"):
        Distiller(student, teacher, DistillationLoss(), kd_start_epoch=start)


def test_bad_parts():
    student, teacher = nets()
    with pytest.raises(ValueError, match="loss must be a DistillationLoss"):
        Distiller(student, teacher, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="student must be an nn.Module"):
        Distiller("resnet", teacher, DistillationLoss())


@pytest.mark.parametrize(
    "loss",
    [
        DistillationLoss(4.0, 0.1),
        DistillationLoss(2.0, 1.0, 0.5, scale_by_t2=False),
        DistillationLoss(3.0, 0.3, 0.7, teacher_weight=0.4),
        DistillationLoss(1.0, 0.0, 1.0),
    ],
)
def test_the_objective_computes_exactly_the_loss_it_is_built_from(loss):
    """Distiller is the method objective with Hinton's term (one objective): its loss equals
    DistillationLoss's, part by part and bitwise in the total."""
    from kdistill.objectives.method_distiller import MethodDistiller

    student, teacher = nets()
    d = Distiller(student, teacher, loss)
    assert isinstance(d, MethodDistiller)
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    got = d(x, y).loss
    expected = loss(student(x), teacher(x), y)
    assert got.weights == expected.weights
    assert set(got.parts) == set(expected.parts)
    for k in expected.parts:
        assert torch.equal(got.parts[k], expected.parts[k]), k
    assert torch.equal(got.total, expected.total)


def test_joint_mode_checkpoints_the_teacher():
    student, teacher = nets()
    d = Distiller(student, teacher, DistillationLoss(4.0, 0.1, teacher_weight=0.5))
    state = d.extra_state()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    d.load_extra_state(state)
    assert all(torch.equal(v, state["teacher"][k]) for k, v in teacher.state_dict().items())
    assert d.gradient_ratio(torch.randn(4, 4), torch.randint(0, 3, (4,))) is None
