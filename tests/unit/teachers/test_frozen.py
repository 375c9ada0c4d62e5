"""FrozenTeacher: eval pinned, frozen, inference-mode outputs usable in a loss, BN policies."""

import pytest
import torch
from torch import nn

from kdistill import DistillationLoss, Distiller, FrozenTeacher, Renormalize, TeacherOutput


def bn_net(in_features=6, classes=3):
    return nn.Sequential(
        nn.Linear(in_features, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, classes),
    )


def trained_like(net):
    """Give BN non-trivial running statistics, as a trained teacher has."""
    with torch.no_grad():
        net.train()
        for _ in range(5):
            net(torch.randn(32, 6) * 3 + 1)
    return net.eval()


def test_eval_mode_is_pinned_inside_a_training_container():
    teacher = FrozenTeacher(bn_net())
    container = nn.ModuleDict({"teacher": teacher, "student": nn.Linear(6, 3)})
    container.train()
    assert not teacher.training and not teacher.model.training
    assert all(not m.training for m in teacher.model.modules())
    x = torch.randn(8, 6)
    a, b = teacher(x).logits, teacher(x).logits
    torch.testing.assert_close(a, b)  # dropout off: deterministic


def test_parameters_are_frozen_and_outputs_are_plain_tensors():
    teacher = FrozenTeacher(bn_net())
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(4, 6))
    assert isinstance(out, TeacherOutput)
    assert not out.logits.is_inference() and not out.logits.requires_grad
    # usable in a loss that autograd differentiates (inference tensors would raise here)
    student = torch.randn(4, 3, requires_grad=True)
    DistillationLoss(2.0, 0.5)(student, out, torch.zeros(4, dtype=torch.long)).total.backward()
    assert student.grad is not None


def test_running_statistics_unchanged_after_a_training_epoch():
    net = trained_like(bn_net())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    student = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    distiller = Distiller(student, net, DistillationLoss(4.0, 0.1))
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)
    distiller.train()
    for _ in range(20):  # one "epoch" of 20 batches with shifted inputs
        x, y = torch.randn(16, 6) * 5 - 2, torch.randint(0, 3, (16,))
        opt.zero_grad()
        distiller(x, y).loss.total.backward()
        opt.step()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=f"teacher {k} changed")
    # the student's BN did move: the test would notice a frozen student too
    assert not torch.equal(student[1].running_mean, torch.zeros(8))


def test_batch_stats_policy_uses_batch_statistics_without_updating():
    net = trained_like(bn_net())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    teacher = FrozenTeacher(net, bn_policy="batch_stats")
    x = torch.randn(32, 6) * 4 + 3
    got = teacher(x).logits
    # reference: the same network, BN normalizing with this batch's statistics
    h = net[0](x)
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + net[1].eps) * net[1].weight + net[
        1
    ].bias
    expected = net[4](torch.relu(h))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert not net[1].training and net[1].track_running_stats  # flags restored
    frozen = FrozenTeacher(net)(x).logits
    assert not torch.allclose(frozen, got)  # the policy really changes the normalization


def test_bad_settings():
    with pytest.raises(ValueError, match="bn_policy"):
        FrozenTeacher(bn_net(), bn_policy="train")
    with pytest.raises(ValueError, match="nn.Module"):
        FrozenTeacher(lambda x: x)
    with pytest.raises(ValueError, match="dtype"):
        FrozenTeacher(bn_net(), dtype=torch.int8)


def test_reduced_precision_teacher_returns_float32():
    net = trained_like(bn_net())
    x = torch.randn(8, 6)
    full = FrozenTeacher(net)(x).logits
    half = FrozenTeacher(net, dtype=torch.bfloat16)(x).logits
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_input_transform_renormalizes():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)[:, :3]

    student_mean, student_std, teacher_mean, teacher_std = [0.5], [0.25], [0.1], [0.3]
    raw = torch.rand(2, 1, 4, 4)
    x_student = (raw - 0.5) / 0.25
    FrozenTeacher(
        Probe(), input_transform=Renormalize(student_mean, student_std, teacher_mean, teacher_std)
    )(x_student)
    torch.testing.assert_close(seen["x"], (raw - 0.1) / 0.3)


def test_renormalize_rejects_bad_statistics():
    with pytest.raises(ValueError, match="one value per channel"):
        Renormalize([0.5, 0.5], [0.2], [0.1], [0.3])
    with pytest.raises(ValueError, match="to_std"):
        Renormalize([0.5], [0.2], [0.1], [0.0])


@pytest.mark.parametrize("wrap", [lambda z: (z, z * 0), lambda z: {"logits": z, "aux": z}])
def test_models_returning_tuples_or_dicts(wrap):
    class Net(nn.Module):
        def forward(self, x):
            return wrap(x[:, :3])

    x = torch.randn(2, 5)
    torch.testing.assert_close(FrozenTeacher(Net())(x).logits, x[:, :3])


def test_unreadable_model_output():
    class Net(nn.Module):
        def forward(self, x):
            return "logits"

    with pytest.raises(ValueError, match="cannot find logits"):
        FrozenTeacher(Net())(torch.randn(1, 2))


def test_a_teacher_output_has_exactly_one_form():
    from kdistill.types import TeacherOutput

    hidden, head = torch.randn(2, 3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="last_hidden= and head_weight= together"):
        TeacherOutput(last_hidden=hidden)
    with pytest.raises(ValueError, match="exactly one of .* got logits=set.*last_hidden=set"):
        TeacherOutput(logits=torch.randn(2, 3, 5), last_hidden=hidden, head_weight=head)
    with pytest.raises(ValueError, match="predicted=...\\) goes with last_hidden= only"):
        TeacherOutput(logits=torch.randn(2, 3, 5), predicted=torch.zeros(2, 3))
    out = TeacherOutput(last_hidden=hidden, head_weight=head)
    assert torch.equal(out.predictions(), (hidden @ head.T).argmax(-1))
    with pytest.raises(ValueError, match="has no full scores"):
        _ = out.scores
