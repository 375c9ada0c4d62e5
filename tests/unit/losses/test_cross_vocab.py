"""Cross-vocabulary divergences against hand-worked numbers and float64 references."""

import math

import pytest
import torch

from kdistill.losses.cross_vocab import (
    mapped_teacher_logprobs,
    sorted_probs,
    span_divergence_per_token,
    uld_per_token,
)


def test_uld_of_a_hand_worked_pair():
    student = torch.tensor([[0.7, 0.2, 0.1]]).log()
    teacher = torch.tensor([[0.1, 0.5, 0.1, 0.3]]).log()
    # sorted: 0.7 0.2 0.1 0  against  0.5 0.3 0.1 0.1: 0.2 + 0.1 + 0 + 0.1
    value = uld_per_token(student, sorted_probs(teacher, 1.0), 1.0)
    assert value.item() == pytest.approx(0.4, abs=1e-6)
    # the student the longer one: padded the other way
    assert uld_per_token(teacher, sorted_probs(student, 1.0), 1.0).item() == pytest.approx(
        0.4, abs=1e-6
    )


def test_mapped_teacher_distribution_of_a_hand_worked_map():
    teacher = torch.tensor([[0.5, 0.2, 0.2, 0.1]]).log()
    mapping = torch.tensor([1, 1, -1, 0])  # 0 and 1 -> student 1, 2 left out, 3 -> student 0
    logp = mapped_teacher_logprobs(teacher, mapping, 3, temperature=1.0)
    # kept mass 0.8: student 0 gets 0.1 / 0.8, student 1 0.7 / 0.8, student 2 nothing
    assert logp.exp().tolist()[0] == pytest.approx([0.125, 0.875, 0.0], abs=1e-6)
    assert math.isinf(logp[0, 2].item())


def reference_span_kl(student, teacher, mapping, vocab, t):
    """Forward KL of the mapped distribution, float64, written out term by term."""
    out = []
    for s_row, t_row in zip(student.double(), teacher.double(), strict=True):
        p_t = torch.softmax(t_row / t, -1)
        q = torch.zeros(vocab, dtype=torch.float64)
        for i, j in enumerate(mapping.tolist()):
            if j >= 0:
                q[j] += p_t[i]
        q = q / q.sum()
        log_s = torch.log_softmax(s_row / t, -1)
        out.append(sum(float(q[v] * (q[v].log() - log_s[v])) for v in range(vocab) if q[v] > 0))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_span_forward_kl_equals_a_float64_reference(t):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 11, generator=g)
    mapping = torch.randint(-1, 7, (11,), generator=g)
    mapping[0] = 3  # some mass is kept
    target = mapped_teacher_logprobs(teacher, mapping, 7, t)
    got = span_divergence_per_token(student, target, kind="forward_kl", temperature=t)
    assert torch.allclose(
        got.double(), reference_span_kl(student, teacher, mapping, 7, t), atol=1e-5
    )
    # float64 in, float64 out, to 1e-12
    target64 = mapped_teacher_logprobs(teacher.double(), mapping, 7, t)
    got64 = span_divergence_per_token(student.double(), target64, kind="forward_kl", temperature=t)
    assert torch.allclose(got64, reference_span_kl(student, teacher, mapping, 7, t), atol=1e-12)


def test_every_span_divergence_is_finite_and_zero_on_identical_distributions():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    same = mapped_teacher_logprobs(logits, torch.arange(6), 6, 1.5)
    for kind in ("forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"):
        value = span_divergence_per_token(logits, same, kind=kind, temperature=1.5)
        assert torch.allclose(value, torch.zeros(4), atol=1e-6), kind
    holes = mapped_teacher_logprobs(logits, torch.tensor([0, 0, 1, 1, 2, 2]), 6, 1.0)
    for kind in ("forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"):
        assert torch.isfinite(
            span_divergence_per_token(logits, holes, kind=kind, temperature=1.0)
        ).all()


def test_uld_gradient_reaches_the_student_and_vanishes_on_identical_sorted_distributions():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    permuted = logits.detach()[:, [4, 2, 0, 1, 3]]
    value = uld_per_token(logits, sorted_probs(permuted, 1.0), 1.0)
    assert torch.allclose(value, torch.zeros(3), atol=1e-6)  # ULD ignores which token is which
    other = torch.randn(3, 9, generator=torch.Generator().manual_seed(3))
    uld_per_token(logits, sorted_probs(other, 1.0), 1.0).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
