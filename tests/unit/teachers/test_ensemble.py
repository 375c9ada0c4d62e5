"""EnsembleTeacher against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from kdistill import DistillationLoss, EnsembleTeacher, FrozenTeacher


class Fixed(nn.Module):
    """A 'network' that always answers the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("z", torch.tensor([logits], dtype=torch.float64))

    def forward(self, x):
        return self.z.expand(x.shape[0], -1)


def softmax(values, T):
    e = [math.exp(v / T) for v in values]
    return [v / sum(e) for v in e]


def test_probability_average_at_temperature():
    a, b = [2.0, 0.0, -1.0], [0.0, 3.0, 1.0]
    ens = EnsembleTeacher([Fixed(a), Fixed(b)], temperature=2.0)
    out = ens(torch.zeros(1, 1))
    expected = [(p + q) / 2 for p, q in zip(softmax(a, 2.0), softmax(b, 2.0))]
    assert out.logits is None and out.temperature == 2.0
    assert out.probs[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_weighted_probability_average():
    a, b = [1.0, 0.0], [0.0, 1.0]
    ens = EnsembleTeacher([Fixed(a), Fixed(b)], weights=[3, 1], temperature=1.0)
    pa, pb = softmax(a, 1.0), softmax(b, 1.0)
    expected = [0.75 * x + 0.25 * y for x, y in zip(pa, pb)]
    assert ens(torch.zeros(2, 1)).probs[1].tolist() == pytest.approx(expected, rel=1e-12)


def test_logit_average():
    a, b = [2.0, 0.0, -1.0], [0.0, 3.0, 1.0]
    out = EnsembleTeacher([Fixed(a), Fixed(b)], weights=[1, 3], reduce="logits")(torch.zeros(1, 1))
    assert out.logits[0].tolist() == pytest.approx([0.5, 2.25, 0.5], rel=1e-12)


def test_plain_models_are_frozen_and_teachers_kept():
    member = FrozenTeacher(nn.Linear(4, 3))
    ens = EnsembleTeacher([nn.Linear(4, 3), member], reduce="logits")
    assert isinstance(ens.members[0], FrozenTeacher) and ens.members[1] is member
    assert all(not p.requires_grad for p in ens.parameters())


def test_ensemble_feeds_the_loss():
    ens = EnsembleTeacher([nn.Linear(4, 3), nn.Linear(4, 3)], temperature=4.0)
    x = torch.randn(5, 4)
    student = torch.randn(5, 3, requires_grad=True)
    out = DistillationLoss(4.0, 0.1)(student, ens(x), torch.zeros(5, dtype=torch.long))
    out.total.backward()
    assert student.grad is not None
    with pytest.raises(ValueError, match="temperature 4.0 but the loss uses temperature 2.0"):
        DistillationLoss(2.0, 0.1)(student, ens(x), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teachers": []}, "at least one"),
        ({"reduce": "median", "temperature": 1.0}, "reduce"),
        ({"temperature": None}, "temperature="),
        ({"weights": [1.0], "temperature": 1.0}, "1 weights for 2 teachers"),
        ({"weights": [1.0, -1.0], "temperature": 1.0}, ">= 0"),
        ({"weights": [0.0, 0.0], "temperature": 1.0}, "positive sum"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_ensembles(kwargs, match):
    args = {"teachers": [nn.Linear(2, 2), nn.Linear(2, 2)], **kwargs}
    with pytest.raises(ValueError, match=match):
        EnsembleTeacher(**args)
