"""The distillation math against a naive float64 reference, its limits and its errors."""

import math

import numpy as np
import pytest
import torch

from kdistill import DistillationLoss, TeacherOutput
from kdistill.losses import functional as KF


def naive_loss(zs, zt, y, T, alpha, beta, scale=True):
    """Per-sample loops in numpy float64: the textbook formulas, no shortcuts."""
    zs, zt, y = np.asarray(zs, np.float64), np.asarray(zt, np.float64), np.asarray(y)
    ce_terms, kl_terms = [], []
    for s, t, label in zip(zs, zt, y):
        p_s1 = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        ce_terms.append(-math.log(p_s1[label]))
        p_t = np.exp(t / T) / np.exp(t / T).sum()
        p_s = np.exp(s / T) / np.exp(s / T).sum()
        kl_terms.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    ce, kl = float(np.mean(ce_terms)), float(np.mean(kl_terms))
    total = alpha * ce + beta * (T * T if scale else 1.0) * kl
    return total, ce, kl


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize(("alpha", "beta"), [(0.1, None), (1.0, 0.5), (0.3, 2.0), (0.0, 1.0)])
@pytest.mark.parametrize("scale", [True, False])
def test_matches_naive_float64_reference(T, alpha, beta, scale):
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (7,), generator=g)
    out = DistillationLoss(T, alpha, beta, scale_by_t2=scale)(zs, zt, y)
    eff_beta = 1 - alpha if beta is None else beta
    total, ce, kl = naive_loss(zs.numpy(), zt.numpy(), y.numpy(), T, alpha, eff_beta, scale)
    assert out.total.item() == pytest.approx(total, rel=1e-10)
    assert out.parts["student"].item() == pytest.approx(ce, rel=1e-10)
    assert out.parts["distill"].item() == pytest.approx(kl, rel=1e-10, abs=1e-14)
    assert out.weights["student"] == alpha
    assert out.weights["distill"] == pytest.approx(eff_beta * (T * T if scale else 1))


def test_float32_matches_float64_reference():
    zs, zt = torch.randn(16, 10) * 4, torch.randn(16, 10) * 4
    y = torch.randint(0, 10, (16,))
    out = DistillationLoss(4.0, 0.1)(zs, zt, y)
    ref = DistillationLoss(4.0, 0.1)(zs.double(), zt.double(), y)
    assert out.total.dtype == torch.float32
    assert out.total.item() == pytest.approx(ref.total.item(), rel=1e-5)


def test_t1_is_plain_kl_between_softmaxes():
    zs, zt = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (4,))
    out = DistillationLoss(1.0, 0.5)(zs, zt, y)
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(zs, 1), torch.log_softmax(zt, 1), log_target=True, reduction="batchmean"
    )
    assert out.parts["distill"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert out.weights["distill"] == 0.5  # T**2 == 1


def test_distill_part_is_zero_when_student_equals_teacher():
    z = torch.randn(8, 10)
    out = DistillationLoss(4.0, 0.1)(z, z.clone(), torch.zeros(8, dtype=torch.long))
    assert out.parts["distill"].item() == pytest.approx(0.0, abs=1e-6)


def test_high_temperature_limit_is_logit_matching():
    """Hinton 2015, 2.1: for T >> |z|, T^2 * KL -> sum_i (z_i - v_i)^2 / (2C), zero-mean logits."""
    C = 10
    zs = torch.randn(32, C, dtype=torch.float64)
    zt = torch.randn(32, C, dtype=torch.float64)
    zs, zt = zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True)
    matching = ((zs - zt) ** 2).sum(1).mean() / (2 * C)
    errors = []
    for T in (10.0, 100.0, 1000.0):
        scaled = T * T * KF.soft_target_kl(zs, teacher_logits=zt, temperature=T)
        errors.append(abs(scaled.item() - matching.item()) / matching.item())
    assert errors[-1] < 1e-3
    assert errors[0] > errors[1] > errors[2]  # converges as T grows


def test_t2_scaling_keeps_gradient_scale_across_temperatures():
    g = torch.Generator().manual_seed(3)
    zs0 = torch.randn(64, 10, generator=g) * 3
    zt = torch.randn(64, 10, generator=g) * 3
    scaled, unscaled = [], []
    for T in (2.0, 4.0, 8.0, 16.0, 20.0):
        for scale, store in ((True, scaled), (False, unscaled)):
            zs = zs0.clone().requires_grad_(True)
            out = DistillationLoss(T, alpha=0.0, beta=1.0, scale_by_t2=scale)(zs, zt, None)
            out.total.backward()
            store.append(zs.grad.norm().item())
    assert max(scaled) / min(scaled) < 3.0  # same order of magnitude for T in 2..20
    assert max(unscaled) / min(unscaled) > 20.0  # without T^2 it shrinks ~1/T^2


def test_no_gradient_reaches_teacher_logits():
    zs = torch.randn(6, 4, requires_grad=True)
    zt = torch.randn(6, 4, requires_grad=True)
    out = DistillationLoss(4.0, 0.2)(zs, zt, torch.randint(0, 4, (6,)))
    out.total.backward()
    assert zt.grad is None
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_all_ignored_batch():
    zs = torch.randn(5, 3, requires_grad=True)
    zt = torch.randn(5, 3)
    y = torch.full((5,), -100)
    out = DistillationLoss(2.0, 0.5)(zs, zt, y)
    assert out.parts["student"].item() == 0.0
    assert torch.isfinite(out.total)
    out.total.backward()
    # only the distillation term moves the student: same gradient as distill alone
    zs2 = zs.detach().clone().requires_grad_(True)
    DistillationLoss(2.0, 0.0, 0.5)(zs2, zt, None).total.backward()
    torch.testing.assert_close(zs.grad, zs2.grad)


def test_partially_ignored_batch_averages_over_labelled_samples():
    zs, zt = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, -100, 2, -100])
    out = DistillationLoss(2.0, 0.5)(zs, zt, y)
    expected = torch.nn.functional.cross_entropy(zs[[0, 2]], y[[0, 2]])
    assert out.parts["student"].item() == pytest.approx(expected.item(), rel=1e-12)
    # distillation still covers all four samples
    assert out.parts["distill"].item() == pytest.approx(
        KF.soft_target_kl(zs, teacher_logits=zt, temperature=2.0).item(), rel=1e-12
    )


def test_teacher_probabilities_give_the_same_loss_as_logits():
    zs, zt = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    loss = DistillationLoss(3.0, 0.3)
    from_logits = loss(zs, zt, y)
    probs = torch.softmax(zt / 3.0, 1)
    from_probs = loss(zs, TeacherOutput(probs=probs, temperature=3.0), y)
    assert from_probs.total.item() == pytest.approx(from_logits.total.item(), rel=1e-12)


def test_one_hot_teacher_probabilities_are_finite():
    zs = torch.randn(3, 4)
    probs = torch.eye(4)[:3]
    out = DistillationLoss(1.0, 0.0, 1.0)(zs, TeacherOutput(probs=probs, temperature=1.0), None)
    assert torch.isfinite(out.total)


def test_weight_forms():
    hinton = DistillationLoss(4.0, alpha=0.1)
    assert (hinton.alpha, hinton.beta) == (0.1, pytest.approx(0.9))
    fixed_alpha = DistillationLoss(4.0, alpha=1.0, beta=0.5)
    assert (fixed_alpha.alpha, fixed_alpha.beta) == (1.0, 0.5)
    free = DistillationLoss(4.0, alpha=3.0, beta=7.0)
    assert (free.alpha, free.beta) == (3.0, 7.0)
    distill_only = DistillationLoss(4.0, alpha=0.0, beta=1.0)
    out = distill_only(torch.randn(2, 3), torch.randn(2, 3), None)
    assert "student" not in out.parts


def test_spatial_dimensions_are_extra_samples():
    zs, zt = (
        torch.randn(2, 5, 3, 3, dtype=torch.float64),
        torch.randn(2, 5, 3, 3, dtype=torch.float64),
    )
    y = torch.randint(0, 5, (2, 3, 3))
    out = DistillationLoss(2.0, 0.5)(zs, zt, y)
    flat = DistillationLoss(2.0, 0.5)(
        zs.permute(0, 2, 3, 1).reshape(-1, 5), zt.permute(0, 2, 3, 1).reshape(-1, 5), y.reshape(-1)
    )
    assert out.total.item() == pytest.approx(flat.total.item(), rel=1e-12)


def test_half_precision_is_upcast():
    zs = (torch.randn(4, 10) * 10).to(torch.bfloat16)
    zt = (torch.randn(4, 10) * 10).to(torch.bfloat16)
    out = DistillationLoss(4.0, 0.1)(zs, zt, torch.randint(0, 10, (4,)))
    ref = DistillationLoss(4.0, 0.1)(zs.double(), zt.double(), torch.randint(0, 10, (4,)) * 0)
    assert out.total.dtype == torch.float32
    assert out.parts["distill"].item() == pytest.approx(ref.parts["distill"].item(), rel=1e-4)


def test_reductions():
    zs, zt = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, -100, 1])
    none = KF.student_cross_entropy(zs, y, reduction="none")
    assert none.shape == (5,) and none[3] == 0
    assert KF.student_cross_entropy(zs, y, reduction="sum").item() == pytest.approx(
        none.sum().item()
    )
    kl = KF.soft_target_kl(zs, teacher_logits=zt, temperature=2.0, reduction="none")
    assert kl.shape == (5,) and bool((kl >= -1e-7).all())
    with pytest.raises(ValueError, match="reduction"):
        KF.student_cross_entropy(zs, y, reduction="avg")


def test_joint_teacher_term_trains_teacher_only_through_its_own_labels():
    zs = torch.randn(6, 4, requires_grad=True)
    zt = torch.randn(6, 4, requires_grad=True)
    y = torch.randint(0, 4, (6,))
    out = DistillationLoss(4.0, 0.2, teacher_weight=0.7)(zs, zt, y)
    assert set(out.parts) == {"student", "distill", "teacher"}
    out.total.backward()
    zt2 = zt.detach().clone().requires_grad_(True)
    (0.7 * torch.nn.functional.cross_entropy(zt2, y)).backward()
    torch.testing.assert_close(zt.grad, zt2.grad)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), float("inf"), "hot", None])
def test_bad_temperature(T):
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(T, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 0.5, "beta": -1.0}, "beta"),
        ({"alpha": 0.0, "beta": 0.0}, "both 0"),
        ({"alpha": 1.5}, "1 - alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": 0.1, "teacher_weight": -1}, "teacher_weight"),
        ({"alpha": True}, "alpha"),
    ],
)
def test_bad_weights(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(4.0, **kwargs)


def test_alpha_one_with_default_beta_is_plain_cross_entropy_weighting():
    loss = DistillationLoss(4.0, alpha=1.0)
    assert loss.beta == 0.0


@pytest.mark.parametrize(
    ("zs", "zt", "y", "match"),
    [
        (torch.randn(4, 10), torch.randn(4, 9), torch.zeros(4, dtype=torch.long), "10 classes.*9"),
        (torch.randn(4, 10), torch.randn(3, 10), torch.zeros(4, dtype=torch.long), "shape"),
        (torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 10, 2]), "label 10"),
        (torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, -3, 1, 2]), "label -3"),
        (torch.randn(4, 10), torch.randn(4, 10), torch.zeros(4), "integer class indices"),
        (torch.randn(4, 10), torch.randn(4, 10), torch.zeros(5, dtype=torch.long), "targets shape"),
        (torch.randn(10), torch.randn(10), torch.zeros(1, dtype=torch.long), r"\(N, C\)"),
        (
            torch.tensor([[0.0, float("nan")]]),
            torch.randn(1, 2),
            torch.zeros(1, dtype=torch.long),
            "student_logits.*NaN",
        ),
        (
            torch.randn(1, 2),
            torch.tensor([[float("inf"), 0.0]]),
            torch.zeros(1, dtype=torch.long),
            "teacher logits.*NaN/Inf",
        ),
    ],
)
def test_bad_inputs(zs, zt, y, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(4.0, 0.1)(zs, zt, y)


def test_probabilities_at_another_temperature_are_refused():
    probs = torch.softmax(torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="temperature 2.0 but the loss uses temperature 4.0"):
        DistillationLoss(4.0, 0.1)(
            torch.randn(2, 3),
            TeacherOutput(probs=probs, temperature=2.0),
            torch.zeros(2, dtype=torch.long),
        )


def test_probabilities_that_are_not_a_distribution_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        DistillationLoss(4.0, 0.1)(
            torch.randn(2, 3),
            TeacherOutput(probs=torch.ones(2, 3), temperature=4.0),
            torch.zeros(2, dtype=torch.long),
        )


def test_teacher_output_must_say_what_it_holds():
    with pytest.raises(ValueError, match="exactly one"):
        TeacherOutput()
    with pytest.raises(ValueError, match="temperature"):
        TeacherOutput(probs=torch.ones(1, 1))
    with pytest.raises(ValueError, match="temperature only"):
        TeacherOutput(logits=torch.ones(1, 1), temperature=2.0)


def test_missing_targets_with_student_weight():
    with pytest.raises(ValueError, match="targets are required"):
        DistillationLoss(4.0, 0.1)(torch.randn(2, 3), torch.randn(2, 3), None)


def test_validation_can_be_switched_off():
    loss = DistillationLoss(4.0, 0.1, validate=False)
    out = loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]))
    assert torch.isfinite(out.total)


def test_loss_output_logging_helpers():
    out = DistillationLoss(2.0, 0.25)(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))
    floats = out.as_floats()
    assert floats["distill_weighted"] == pytest.approx(floats["distill"] * 0.75 * 4, rel=1e-6)
    assert floats["total"] == pytest.approx(
        floats["student_weighted"] + floats["distill_weighted"], rel=1e-6
    )


def test_gradient_norms():
    zs = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(16, 10, dtype=torch.float64) * 10  # a confident teacher
    y = torch.randint(0, 10, (16,))
    out = DistillationLoss(4.0, 0.1)(zs, zt, y)
    norms = KF.gradient_norms({"total": out.total, "labels": out.parts["student"]}, zs)
    (g_ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(zs, y), zs)
    assert norms["labels"] == pytest.approx(float(g_ce.norm()), rel=1e-9)
    expected = 0.1 * torch.nn.functional.cross_entropy(zs, y) + 0.9 * 16 * KF.soft_target_kl(
        zs, teacher_logits=zt, temperature=4.0
    )
    (g_total,) = torch.autograd.grad(expected, zs)
    assert norms["total"] == pytest.approx(float(g_total.norm()), rel=1e-9)
