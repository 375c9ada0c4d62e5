"""The distillation methods against float64 references written from their papers' equations
(per-sample loops in numpy), their gradients, limits and errors."""

import math

import numpy as np
import pytest
import torch

from kdistill.losses import methods as M
from kdistill.losses.crd import CRDLoss, nce_loss


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ------------------------------------------------------------------ references (the equations)


def ref_standardize(z, eps=1e-7):
    z = np.asarray(z, np.float64)
    return np.stack([(r - r.mean()) / (r.std(ddof=1) + eps) for r in z])


def ref_dkd(zs, zt, y, alpha, beta, T, ignore_index=-100):
    tckd, nckd = [], []
    for s, t, g in zip(np.asarray(zs), np.asarray(zt), np.asarray(y)):
        if g == ignore_index:
            continue
        ps, pt = softmax(s / T), softmax(t / T)
        bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
        tckd.append(kl(bt, bs))
        others = [c for c in range(len(s)) if c != g]
        nckd.append(kl(softmax(t[others] / T), softmax(s[others] / T)))
    return alpha * T * T * np.mean(tckd) + beta * T * T * np.mean(nckd)


def ref_dist(zs, zt, beta, gamma, T):
    ps = np.stack([softmax(r / T) for r in np.asarray(zs)])
    pt = np.stack([softmax(r / T) for r in np.asarray(zt)])
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps, pt)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps.T, pt.T)])
    return T * T * (beta * inter + gamma * intra)


def ref_attention(f, p):
    f = np.asarray(f)
    maps = []
    for sample in f:
        a = (np.abs(sample) ** p).mean(axis=0).reshape(-1)
        maps.append(a / np.linalg.norm(a))
    return np.stack(maps)


def ref_at(fs, ft, p):
    return float(np.mean((ref_attention(fs, p) - ref_attention(ft, p)) ** 2))


def ref_rkd(es, et, wd, wa):
    es, et = np.asarray(es).reshape(len(es), -1), np.asarray(et).reshape(len(et), -1)
    n = len(es)

    def distances(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e):
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        out[i, j, k] = u @ v / (nu * nv)
        return out

    ds, dt = distances(es), distances(et)
    a_s, a_t = angles(es), angles(et)
    loss_d = np.mean([huber(a, b) for a, b in zip(ds.ravel(), dt.ravel())])
    loss_a = np.mean([huber(a, b) for a, b in zip(a_s.ravel(), a_t.ravel())])
    return wd * loss_d + wa * loss_a


def ref_pkt(fs, ft, eps=1e-7):
    def conditional(f):
        f = np.asarray(f).reshape(len(f), -1)
        n = len(f)
        k = np.array(
            [
                [
                    (f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j])) + 1) / 2
                    for j in range(n)
                ]
                for i in range(n)
            ]
        )
        return k / k.sum(axis=1, keepdims=True)

    ps, pt = conditional(fs), conditional(ft)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def ref_sp(fs, ft):
    def gram(f):
        f = np.asarray(f).reshape(len(f), -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    n = len(fs)
    return float(((gram(fs) - gram(ft)) ** 2).sum() / (n * n))


# ------------------------------------------------------------------ values


def test_standardize_matches_reference():
    z = rand(5, 7, scale=3)
    out = M.standardize_logits(z)
    assert np.allclose(out.numpy(), ref_standardize(z.numpy()), rtol=1e-12, atol=1e-12)
    assert np.allclose(out.std(dim=1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 8.0), (0.5, 2.0), (0.0, 1.0)])
def test_dkd_matches_reference(T, alpha, beta):
    zs, zt = rand(6, 5, seed=1, scale=3), rand(6, 5, seed=2, scale=3)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    out = M.dkd_loss(zs, zt, y, alpha, beta, T)
    assert out.item() == pytest.approx(ref_dkd(zs, zt, y, alpha, beta, T), rel=1e-10)


def test_dkd_from_teacher_probabilities_equals_from_logits():
    zs, zt = rand(6, 5, seed=1, scale=3), rand(6, 5, seed=2, scale=3)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    probs = torch.softmax(zt / 4, dim=1)
    a = M.dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    b = M.dkd_loss(zs, None, y, 1.0, 8.0, 4.0, teacher_probs=probs)
    assert a.item() == pytest.approx(b.item(), rel=1e-10)


def test_dkd_leaves_out_unlabelled_samples():
    zs, zt = rand(6, 5, seed=1, scale=3), rand(6, 5, seed=2, scale=3)
    y = torch.tensor([0, -100, 2, -100, 1, 3])
    out = M.dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    assert out.item() == pytest.approx(ref_dkd(zs, zt, y, 1.0, 8.0, 4.0), rel=1e-10)
    none = M.dkd_loss(zs, zt, torch.full((6,), -100), 1.0, 8.0, 4.0)
    assert none.item() == 0.0


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize(("beta", "gamma"), [(1.0, 1.0), (2.0, 0.5)])
def test_dist_matches_reference(T, beta, gamma):
    zs, zt = rand(8, 6, seed=3, scale=2), rand(8, 6, seed=4, scale=2)
    out = M.dist_loss(zs, zt, beta, gamma, T)
    assert out.item() == pytest.approx(ref_dist(zs, zt, beta, gamma, T), rel=1e-8)


def test_dist_of_one_sample_has_no_intra_class_term():
    zs, zt = rand(1, 6, seed=3), rand(1, 6, seed=4)
    ps, pt = torch.softmax(zs, 1)[0].numpy(), torch.softmax(zt, 1)[0].numpy()
    expected = 1 - np.corrcoef(ps, pt)[0, 1]
    assert M.dist_loss(zs, zt).item() == pytest.approx(expected, rel=1e-8)


def test_fitnet_is_the_mean_squared_error():
    fs, ft = rand(3, 4, 5, 5, seed=5), rand(3, 4, 5, 5, seed=6)
    assert M.fitnet_loss(fs, ft).item() == pytest.approx(
        float(((fs - ft) ** 2).numpy().mean()), rel=1e-12
    )


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_matches_reference(p):
    fs, ft = rand(3, 4, 5, 5, seed=7), rand(3, 8, 5, 5, seed=8)  # channel counts may differ
    assert M.attention_transfer_loss(fs, ft, p).item() == pytest.approx(
        ref_at(fs, ft, p), rel=1e-10
    )


def test_attention_transfer_resizes_only_when_asked():
    fs, ft = rand(2, 4, 8, 8, seed=7), rand(2, 4, 4, 4, seed=8)
    with pytest.raises(ValueError, match=r"different sizes.*\(8, 8\).*\(4, 4\).*resize"):
        M.attention_transfer_loss(fs, ft)
    pooled = torch.nn.functional.adaptive_avg_pool2d(fs, (4, 4))
    assert M.attention_transfer_loss(fs, ft, resize=True).item() == pytest.approx(
        ref_at(pooled, ft, 2.0), rel=1e-10
    )


@pytest.mark.parametrize(("wd", "wa"), [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_reference(wd, wa):
    es, et = rand(5, 3, seed=9), rand(5, 7, seed=10) * 4  # dimensions may differ
    assert M.rkd_loss(es, et, wd, wa).item() == pytest.approx(ref_rkd(es, et, wd, wa), rel=1e-9)


def test_pkt_matches_reference():
    fs, ft = rand(6, 4, 2, seed=11), rand(6, 5, seed=12)
    assert M.pkt_loss(fs, ft).item() == pytest.approx(ref_pkt(fs, ft), rel=1e-9)


def test_sp_matches_reference():
    fs, ft = rand(6, 4, 3, 3, seed=13), rand(6, 8, 2, 2, seed=14)
    assert M.similarity_preserving_loss(fs, ft).item() == pytest.approx(ref_sp(fs, ft), rel=1e-10)


# ------------------------------------------------------------------ identical networks


def test_identical_student_and_teacher_give_zero():
    z = rand(6, 5, seed=15, scale=3)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    f = rand(6, 4, 3, 3, seed=16)
    assert M.dkd_loss(z, z.clone(), y).item() == pytest.approx(0.0, abs=1e-12)
    assert M.dist_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert M.fitnet_loss(f, f.clone()).item() == 0.0
    assert M.attention_transfer_loss(f, f.clone()).item() == 0.0
    assert M.rkd_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert M.pkt_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert M.similarity_preserving_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize(
    "loss",
    [
        lambda s, t: M.dkd_loss(
            s.flatten(1)[:, :5], t.flatten(1)[:, :5], torch.tensor([0, 3, 1, 4]), 1.0, 8.0, 4.0
        ),
        lambda s, t: M.dist_loss(s.flatten(1)[:, :5], t.flatten(1)[:, :5], 1.0, 1.0, 2.0),
        lambda s, t: M.standardize_logits(s.flatten(1)).sum(),
        M.fitnet_loss,
        M.attention_transfer_loss,
        M.rkd_loss,
        M.pkt_loss,
        M.similarity_preserving_loss,
    ],
    ids=["dkd", "dist", "standardize", "fitnet", "at", "rkd", "pkt", "sp"],
)
def test_gradients_match_finite_differences_and_never_reach_the_teacher(loss):
    s = rand(4, 3, 2, 2, seed=17).requires_grad_(True)
    t = rand(4, 3, 2, 2, seed=18).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, t), (s,), eps=1e-6, atol=1e-5)
    loss(s, t).backward()
    assert t.grad is None or not t.grad.any()


def test_one_sample_batches_are_finite():
    s, t = rand(1, 3, 2, 2, seed=19), rand(1, 3, 2, 2, seed=20)
    for fn in (M.fitnet_loss, M.attention_transfer_loss, M.rkd_loss, M.pkt_loss,
               M.similarity_preserving_loss):  # fmt: skip
        assert math.isfinite(fn(s, t).item()), fn.__name__
    z = rand(1, 4, seed=21)
    assert math.isfinite(M.dkd_loss(z, z * 2, torch.tensor([1])).item())


def test_half_precision_is_upcast():
    s, t = rand(4, 3, 2, 2, seed=19).half(), rand(4, 3, 2, 2, seed=20).half()
    assert M.similarity_preserving_loss(s, t).dtype == torch.float32
    assert M.rkd_loss(s, t).dtype == torch.float32


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.dkd_loss(rand(3, 4), rand(3, 5), torch.tensor([0, 1, 2])), "classes"),
        (lambda: M.dkd_loss(rand(3, 4), rand(3, 4), torch.tensor([0, 1, 9])), "out of range"),
        (lambda: M.dkd_loss(rand(3, 1), rand(3, 1), torch.tensor([0, 0, 0])), "C >= 2"),
        (
            lambda: M.dkd_loss(rand(3, 4), rand(3, 4), torch.tensor([0, 1, 2]), temperature=0),
            "temperature",
        ),
        (lambda: M.dkd_loss(rand(3, 4), None, torch.tensor([0, 1, 2])), "exactly one"),
        (lambda: M.dist_loss(rand(3, 4), rand(2, 4)), "shape"),
        (lambda: M.dist_loss(rand(3, 4), rand(3, 4), temperature=-1), "temperature"),
        (lambda: M.standardize_logits(rand(3)), r"\(N, C\)"),
        (lambda: M.fitnet_loss(rand(2, 4, 3, 3), rand(2, 8, 3, 3)), "same shape"),
        (lambda: M.attention_transfer_loss(rand(2, 4), rand(2, 4)), "at least 3 dimensions"),
        (lambda: M.attention_transfer_loss(rand(2, 4, 3, 3), rand(3, 4, 3, 3)), "samples"),
        (lambda: M.rkd_loss(rand(2, 4), rand(3, 4)), "samples"),
        (lambda: M.pkt_loss(rand(4), rand(4)), "at least 2 dimensions"),
        (
            lambda: M.similarity_preserving_loss(torch.ones(2, 3, dtype=torch.long), rand(2, 3)),
            "floating",
        ),
        (lambda: M.rkd_loss([[1.0]], rand(1, 1)), "torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ CRD


def test_nce_loss_matches_its_formula():
    scores = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n, k = 100, 4
    expected = 0.0
    for row in scores.numpy():
        expected -= math.log(row[0] / (row[0] + k / n + 1e-7))
        expected -= sum(math.log((k / n) / (x + k / n + 1e-7)) for x in row[1:])
    assert nce_loss(scores, n).item() == pytest.approx(expected / 3, rel=1e-10)


def crd(n=40, classes=4, **kw):
    ids = torch.arange(100, 100 + n)  # stable ids need not start at 0
    labels = torch.arange(n) % classes
    return CRDLoss(6, 10, ids, labels, **{"feat_dim": 8, "nce_k": 5, **kw}), ids, labels


def test_crd_negatives_come_from_other_classes():
    torch.manual_seed(0)
    loss, ids, labels = crd()
    rows = loss.rows(ids[:12])
    negatives = loss.negatives(rows)
    assert negatives.shape == (12, 5)
    assert (labels[negatives] != labels[rows].unsqueeze(1)).all()
    # every other-class row can be drawn
    many = loss.negatives(rows[:1].repeat(2000))
    assert set(many.flatten().tolist()) == {r for r in range(40) if labels[r] != labels[rows[0]]}


def test_crd_memory_moves_towards_the_new_embeddings_and_stays_normalized():
    torch.manual_seed(0)
    loss, ids, _ = crd()
    before = loss.memory_student.clone()
    student = torch.randn(4, 6, requires_grad=True)
    value = loss(student, torch.randn(4, 10), ids[:4])
    value.backward()  # after the memory moved: the step's graph kept the memory it used
    assert student.grad is not None and loss.embed_student.weight.grad is not None
    assert math.isfinite(value.item()) and float(loss.z_student) > 0
    assert not torch.equal(loss.memory_student[:4], before[:4])
    assert torch.equal(loss.memory_student[4:], before[4:])
    assert torch.allclose(loss.memory_student[:4].norm(dim=1), torch.ones(4))
    loss.eval()
    frozen = loss.memory_student.clone()
    loss(torch.randn(4, 6), torch.randn(4, 10), ids[:4])
    assert torch.equal(loss.memory_student, frozen)  # evaluation never writes the memory


def test_crd_clamps_negatives_to_what_the_data_has_and_refuses_bad_ids():
    loss, _ids, _ = crd(n=8, classes=2, nce_k=16384)
    assert loss.nce_k == 4
    with pytest.raises(ValueError, match="outside the training set"):
        loss(torch.randn(2, 6), torch.randn(2, 10), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one class"):
        CRDLoss(6, 10, torch.arange(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="nce_m"):
        crd(nce_m=1.5)
