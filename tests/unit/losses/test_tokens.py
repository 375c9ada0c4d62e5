"""Token-level divergences against float64 references written from their definitions, their
masking and averaging conventions, gradients, and the chunked path against the plain one."""

import math

import numpy as np
import pytest
import torch

from kdistill.losses.tokens import (
    DIVERGENCES,
    fused_token_divergence,
    sparse_token_divergence,
    token_divergence,
)


def softmax(z, t):
    z = np.asarray(z, dtype=np.float64) / t
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p, q):
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def reference(kind, s, t, temperature, beta=0.5, skew=0.1):
    """One token's divergence, from the definitions (no T^2)."""
    ps, pt = softmax(s, temperature), softmax(t, temperature)
    if kind == "forward_kl":
        return kl(pt, ps)
    if kind == "reverse_kl":
        return kl(ps, pt)
    if kind == "jsd":
        m = beta * pt + (1 - beta) * ps
        return beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    if kind == "skew_forward_kl":
        return kl(pt, skew * pt + (1 - skew) * ps)
    if kind == "skew_reverse_kl":
        return kl(ps, skew * ps + (1 - skew) * pt)
    if kind == "tvd":
        return 0.5 * float(np.abs(pt - ps).sum())
    raise AssertionError(kind)


def batch(seed=0, b=2, s=5, v=7, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, s, v, generator=g, dtype=torch.float64) * scale
    teacher = torch.randn(b, s, v, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, v, (b, s), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[-1, -1] = -100  # padding
    return student, teacher, labels


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_each_kind_equals_its_definition_averaged_over_the_kept_tokens(kind, temperature):
    student, teacher, labels = batch()
    got = token_divergence(
        student, teacher, labels, kind=kind, temperature=temperature, beta=0.3, skew=0.2
    )
    kept = [(i, j) for i in range(2) for j in range(5) if labels[i, j] != -100]
    per = [
        reference(kind, student[i, j].numpy(), teacher[i, j].numpy(), temperature, 0.3, 0.2)
        for i, j in kept
    ]
    # the mean over the batch's kept tokens (7 of 10), not a mean of per-sequence means
    expected = sum(per) / len(per) * temperature**2
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_float32_and_bfloat16_inputs_are_computed_in_float32():
    student, teacher, labels = batch(scale=8.0)
    exact = token_divergence(student, teacher, labels, temperature=2.0).item()
    as32 = token_divergence(student.float(), teacher.float(), labels, temperature=2.0)
    as16 = token_divergence(student.bfloat16(), teacher.bfloat16(), labels, temperature=2.0)
    assert as32.dtype == torch.float32 and as16.dtype == torch.float32
    assert as32.item() == pytest.approx(exact, rel=1e-5)
    assert math.isfinite(as16.item()) and as16.item() == pytest.approx(exact, rel=0.1)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_gradients_match_finite_differences(kind):
    student, teacher, labels = batch(b=2, s=3, v=4, scale=1.0)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: token_divergence(s, teacher, labels, kind=kind, temperature=1.5), (student,)
    )
    token_divergence(student, teacher.requires_grad_(True), labels, kind=kind).backward()
    assert teacher.grad is None  # the teacher is detached


def test_bad_inputs_are_named():
    student, teacher, labels = batch()
    with pytest.raises(ValueError, match="every label of the batch is ignore_index"):
        token_divergence(student, teacher, torch.full_like(labels, -100))
    with pytest.raises(ValueError, match="kind must be one of forward_kl"):
        token_divergence(student, teacher, labels, kind="kl")
    with pytest.raises(ValueError, match="jsd needs 0 < beta < 1"):
        token_divergence(student, teacher, labels, kind="jsd", beta=1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        token_divergence(student, teacher, labels, temperature=0)
    with pytest.raises(ValueError, match="labels must be \\(batch, seq\\)"):
        token_divergence(student, teacher, labels[:, 1:])
    with pytest.raises(ValueError, match="align vocabularies"):
        token_divergence(student, teacher[..., :-1], labels)


def test_skew_zero_is_forward_kl():
    student, teacher, labels = batch()
    a = token_divergence(student, teacher, labels, kind="skew_forward_kl", skew=0.0)
    assert torch.allclose(a, token_divergence(student, teacher, labels, kind="forward_kl"))


def reference_sparse(s, ids, logp, temperature):
    ps = softmax(s, temperature)
    pt = np.exp(np.asarray(logp, dtype=np.float64))
    t_buckets = [*pt, max(1.0 - pt.sum(), np.finfo(np.float64).tiny)]
    s_top = ps[np.asarray(ids)]
    s_buckets = [*s_top, max(1.0 - s_top.sum(), np.finfo(np.float64).tiny)]
    return kl(t_buckets, s_buckets)


def test_the_sparse_teacher_is_k_buckets_and_the_tail():
    student, teacher, labels = batch(v=9)
    temperature, k = 2.0, 3
    log_t = torch.log_softmax(teacher / temperature, dim=-1)
    logp, ids = log_t.topk(k, dim=-1)
    got = sparse_token_divergence(student, ids, logp, labels, temperature=temperature)
    kept = [(i, j) for i in range(2) for j in range(5) if labels[i, j] != -100]
    per = [
        reference_sparse(student[i, j].numpy(), ids[i, j].numpy(), logp[i, j].numpy(), temperature)
        for i, j in kept
    ]
    assert got.item() == pytest.approx(sum(per) / len(per) * temperature**2, rel=1e-6)
    # with every token kept (k = vocab) it is the forward KL
    logp, ids = log_t.topk(9, dim=-1)
    full = sparse_token_divergence(student, ids, logp, labels, temperature=temperature)
    dense = token_divergence(student, teacher, labels, temperature=temperature)
    assert full.item() == pytest.approx(dense.item(), rel=1e-6)
    with pytest.raises(ValueError, match="token ids in \\[0, 9\\)"):
        sparse_token_divergence(student, ids + 1, logp, labels)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_the_chunked_loss_equals_the_plain_one(kind, teacher_form, chunk_size):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 6, 5, generator=g, requires_grad=True)
    head = torch.randn(11, 5, generator=g, requires_grad=True)
    t_hidden, t_head = torch.randn(2, 6, 4, generator=g), torch.randn(11, 4, generator=g)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[1, :3] = -100
    t_logits = t_hidden @ t_head.T
    plain = token_divergence(hidden @ head.T, t_logits, labels, kind=kind, temperature=2.0)
    gh, gw = torch.autograd.grad(plain, (hidden, head))
    teacher = t_logits if teacher_form == "logits" else (t_hidden, t_head)
    fused = fused_token_divergence(
        hidden, head, teacher, labels, kind=kind, temperature=2.0, chunk_size=chunk_size
    )
    fh, fw = torch.autograd.grad(fused, (hidden, head))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fh, gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fw, gw, rtol=1e-5, atol=1e-7)
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    torch.autograd.grad = counting_grad
    try:
        with torch.no_grad():  # evaluation: the loss alone, no gradient computed
            evaluated = fused_token_divergence(
                hidden, head, teacher, labels, kind=kind, temperature=2.0
            )
    finally:
        torch.autograd.grad = real_grad
    assert calls == [] and not evaluated.requires_grad
    torch.testing.assert_close(evaluated, plain.detach(), rtol=1e-5, atol=1e-7)


def test_teacher_topk_is_the_top_of_the_tempered_log_softmax():
    from kdistill.losses import teacher_topk

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11, dtype=torch.bfloat16)
    ids, logprobs = teacher_topk(logits, 4, temperature=2.0)
    reference = torch.log_softmax(logits.double() / 2.0, dim=-1)
    assert ids.shape == logprobs.shape == (2, 3, 4) and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.double(), reference.gather(-1, ids), rtol=1e-6, atol=1e-6)
    assert (logprobs[..., :-1] >= logprobs[..., 1:]).all()  # most likely first
    assert (reference.max(-1).values - logprobs[..., 0].double()).abs().max() < 1e-6
    with pytest.raises(ValueError, match=r"k must be in \[1, 11\]"):
        teacher_topk(logits, 12)


@pytest.mark.parametrize("k", [11, 10])
def test_a_sparse_teacher_covering_nearly_everything_has_the_full_gradient(k):
    """A confident student whose top-k hold all but rounding noise of its mass: the tail must
    not come from 1 - sum (its log's gradient divides by that noise)."""
    from kdistill.losses import sparse_token_divergence, teacher_topk

    torch.manual_seed(0)
    s = (torch.randn(3, 4, 11) * 12).requires_grad_()
    t = torch.randn(3, 4, 11) * 12
    labels = torch.randint(0, 11, (3, 4))
    ids, lp = teacher_topk(t, k)
    sparse = sparse_token_divergence(s, ids, lp, labels)
    (g_sparse,) = torch.autograd.grad(sparse, s)
    if k == 11:  # the whole vocabulary: the full forward KL, value and gradient
        full = token_divergence(s, t, labels, kind="forward_kl")
        (g_full,) = torch.autograd.grad(full, s)
        torch.testing.assert_close(sparse, full, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_sparse, g_full, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(g_sparse).all() and g_sparse.abs().max() < 10


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("scale", [1.0, 12.0])  # 12: a confident student, the k hold ~all
@pytest.mark.parametrize("k", [3, 10, 11])
def test_the_closed_form_gradient_of_the_cached_loss_equals_autograds(temperature, scale, k):
    """sparse_kl_and_cross_entropy's gradient, written out, against autograd through the
    definitions, in float64."""
    from kdistill.losses.tokens import (
        sparse_divergence_per_token,
        sparse_kl_and_cross_entropy,
        teacher_topk,
    )

    torch.manual_seed(k)
    z = (torch.randn(7, 11, dtype=torch.float64) * scale).requires_grad_()
    labels = torch.randint(0, 11, (7,))
    ids, lp = teacher_topk(torch.randn(7, 11, dtype=torch.float64) * 3, k, temperature=temperature)
    ce, kl, grad = sparse_kl_and_cross_entropy(
        z, labels, ids, lp.double(), temperature=temperature, ce_weight=0.3, kl_weight=0.7
    )
    ce_ref = torch.nn.functional.cross_entropy(z, labels, reduction="sum")
    kl_ref = sparse_divergence_per_token(z, ids, lp.double(), temperature=temperature).sum()
    (g_ref,) = torch.autograd.grad(0.3 * ce_ref + 0.7 * kl_ref, z)
    torch.testing.assert_close(ce, ce_ref.detach())
    torch.testing.assert_close(kl, kl_ref.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, g_ref, rtol=1e-7, atol=1e-9)
