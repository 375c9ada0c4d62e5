"""The distillation methods beyond Hinton's, as pure tensor functions (tensors in, a scalar out).

Each function is written from its paper's equations; :mod:`kdistill.methods` lists the papers
and default weights, and ``docs/methods.md`` gives the equations. Teacher tensors are detached
inside: no gradient reaches a teacher through these losses. Half-precision inputs are upcast to
float32; float64 stays float64.

Logit-based: :func:`dkd_loss`, :func:`dist_loss`, :func:`standardize_logits`.
Feature-based: :func:`fitnet_loss`, :func:`attention_transfer_loss`, :func:`rkd_loss`,
:func:`pkt_loss`, :func:`similarity_preserving_loss` (CRD, which keeps a memory bank, is the
module :class:`kdistill.losses.crd.CRDLoss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.functional import (
    _upcast,
    check_class_scores,
    check_same_shape,
    check_targets,
)
from kdistill.validation import check_temperature

__all__ = [
    "attention_map",
    "attention_transfer_loss",
    "dist_loss",
    "dkd_loss",
    "dkd_terms",
    "fitnet_loss",
    "pkt_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "standardize_logits",
]


def _check_features(name: str, x: Tensor, min_dim: int = 2) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with at least {min_dim} dimensions "
            f"(N, ...), got shape {tuple(x.shape)} and dtype {x.dtype}"
        )


def _check_batch(student: Tensor, teacher: Tensor) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student features hold {student.shape[0]} samples but teacher features "
            f"{teacher.shape[0]} (shapes {tuple(student.shape)} vs {tuple(teacher.shape)})"
        )


def _teacher_probs(
    teacher_logits: Tensor | None, teacher_probs: Tensor | None, temperature: float
) -> Tensor:
    """The teacher's class probabilities at ``temperature``: from logits, or as given (already
    at that temperature)."""
    if (teacher_logits is None) == (teacher_probs is None):
        raise ValueError("give exactly one of teacher_logits and teacher_probs=")
    if teacher_logits is not None:
        return F.softmax(_upcast(teacher_logits.detach()) / temperature, dim=1)
    return _upcast(teacher_probs.detach())  # type: ignore[union-attr]


# --------------------------------------------------------------------------- logit-based


def _check_logit_pair(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | None,
    temperature: float,
) -> float:
    """The temperature as a float; ``ValueError`` unless the student's logits and the teacher's
    logits or probabilities are class scores of the same shape."""
    t = check_temperature(temperature)
    teacher_scores = teacher_logits if teacher_logits is not None else teacher_probs
    check_class_scores("student_logits", student_logits)
    if teacher_scores is None:
        raise ValueError("give exactly one of teacher_logits and teacher_probs=")
    check_class_scores("teacher scores", teacher_scores)
    check_same_shape(student_logits, teacher_scores, "teacher scores")
    return t


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): each sample's logits minus their mean,
    divided by their standard deviation (Bessel-corrected, as :func:`torch.std`) plus ``eps``.

    Shape ``(N, C)``; the result has mean 0 and standard deviation about 1 per row.
    """
    check_class_scores("logits", logits)
    x = _upcast(logits)
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + eps)


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    temperature: float = 4.0,
    *,
    teacher_probs: Tensor | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """Decoupled KD's two terms ``(TCKD, NCKD)``, each averaged over the labelled samples and
    multiplied by ``T**2`` (see :func:`dkd_loss`)."""
    t = _check_logit_pair(student_logits, teacher_logits, teacher_probs, temperature)
    if student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(
            f"DKD needs (N, C) logits with C >= 2 classes, got shape {tuple(student_logits.shape)}"
        )
    check_targets(targets, student_logits, ignore_index)
    labelled = targets != ignore_index
    z_s = _upcast(student_logits)[labelled] / t
    p_t = _teacher_probs(teacher_logits, teacher_probs, t)[labelled]
    y = targets[labelled].unsqueeze(1)
    n, c = z_s.shape
    if n == 0:  # nothing labelled: zero, still connected to the student
        zero = student_logits.sum() * 0.0
        return zero, zero
    target = F.one_hot(y.squeeze(1), c).bool()
    others = (~target).nonzero()[:, 1].view(n, c - 1)  # the non-target classes of each row

    # TCKD: binary distributions [p(target), 1 - p(target)] of teacher and student.
    log_p_s = F.log_softmax(z_s, dim=1)
    log_s_target = log_p_s.gather(1, y)
    log_s_other = torch.logsumexp(z_s.gather(1, others), dim=1, keepdim=True) - torch.logsumexp(
        z_s, dim=1, keepdim=True
    )
    t_target = p_t.gather(1, y)
    t_other = p_t.gather(1, others).sum(dim=1, keepdim=True)
    b_t = torch.cat([t_target, t_other], dim=1)
    log_b_s = torch.cat([log_s_target, log_s_other], dim=1)
    tckd = (torch.xlogy(b_t, b_t) - b_t * log_b_s).sum(dim=1)

    # NCKD: the distributions among the non-target classes (the target class left out).
    log_q_s = F.log_softmax(z_s.gather(1, others), dim=1)
    q_t = p_t.gather(1, others)
    q_t = q_t / q_t.sum(dim=1, keepdim=True).clamp_min(torch.finfo(q_t.dtype).tiny)
    nckd = (torch.xlogy(q_t, q_t) - q_t * log_q_s).sum(dim=1)
    return tckd.mean() * t * t, nckd.mean() * t * t


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    teacher_probs: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``.

    With ``p = softmax(z / T)`` and ``t`` the label: TCKD is ``KL(b_t || b_s)`` for the binary
    distributions ``b = [p_t, 1 - p_t]`` (target vs all other classes); NCKD is ``KL(q_T || q_S)``
    for the distributions among the non-target classes, formed by a softmax over the
    non-target logits only. Both are averaged over the samples and multiplied by ``T**2``.
    Samples labelled ``ignore_index`` are left out (the decoupling needs the label).

    Args:
        student_logits, teacher_logits: ``(N, C)``.
        targets: ``(N,)`` labels.
        alpha, beta: weights of TCKD and NCKD.
        temperature: T > 0.
        teacher_probs: instead of ``teacher_logits``, the teacher's probabilities at T.
        ignore_index: label of unlabelled samples.
    """
    tckd, nckd = dkd_terms(
        student_logits,
        teacher_logits,
        targets,
        temperature,
        teacher_probs=teacher_probs,
        ignore_index=ignore_index,
    )
    return alpha * tckd + beta * nckd


def _pearson(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    return F.cosine_similarity(
        a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), dim=1, eps=eps
    )


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    *,
    teacher_probs: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): ``beta * T**2 * inter + gamma * T**2 * intra``.

    With ``P = softmax(z / T)`` as an ``(N, C)`` matrix: the inter-class relation loss is
    ``1 - mean_i pearson(P_s[i, :], P_t[i, :])`` (each sample's class probabilities); the
    intra-class relation loss is ``1 - mean_c pearson(P_s[:, c], P_t[:, c])`` (each class's
    probabilities across the batch). A batch of one sample has no intra-class relation: that
    term is 0 then.

    Args:
        student_logits, teacher_logits: ``(N, C)``.
        beta, gamma: weights of the inter- and intra-class terms.
        temperature: T > 0.
        teacher_probs: instead of ``teacher_logits``, the teacher's probabilities at T.
        eps: guards the correlation of a constant vector (which is then 0).
    """
    t = _check_logit_pair(student_logits, teacher_logits, teacher_probs, temperature)
    if student_logits.dim() != 2:
        raise ValueError(f"DIST needs (N, C) logits, got shape {tuple(student_logits.shape)}")
    p_s = F.softmax(_upcast(student_logits) / t, dim=1)
    p_t = _teacher_probs(teacher_logits, teacher_probs, t)
    inter = 1.0 - _pearson(p_s, p_t, eps).mean()
    if p_s.shape[0] < 2:
        intra = inter * 0.0
    else:
        intra = 1.0 - _pearson(p_s.t(), p_t.t(), eps).mean()
    return t * t * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------- feature-based


def fitnet_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets hints (Romero et al., ICLR 2015): the mean squared error over all elements of
    the student's features (after its adapter, the paper's regressor) and the teacher's."""
    _check_features("student_features", student_features)
    _check_features("teacher_features", teacher_features)
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"FitNets compares features of the same shape; student {tuple(student_features.shape)} "
            f"vs teacher {tuple(teacher_features.shape)} (an adapter maps the student's channels; "
            "spatial sizes must match: choose layers of the same resolution)"
        )
    s = _upcast(student_features)
    return F.mse_loss(s, _upcast(teacher_features.detach()).to(s.dtype))


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """AT's attention map: the channel mean of ``|features|**p``, flattened and L2-normalized
    per sample. ``(N, C, H, W)`` -> ``(N, H * W)``."""
    _check_features("features", features, min_dim=3)
    x = _upcast(features)
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(
    student_features: Tensor, teacher_features: Tensor, p: float = 2.0, *, resize: bool = False
) -> Tensor:
    """Attention transfer (Zagoruyko and Komodakis, ICLR 2017): the mean of the squared
    difference of the two attention maps (:func:`attention_map`).

    Args:
        student_features, teacher_features: ``(N, C, H, W)`` maps; channel counts may differ.
        p: the power of the attention map (the paper uses 2).
        resize: when the spatial sizes differ, average-pool the larger map to the smaller one's
            size; without it different sizes are an error.
    """
    _check_features("student_features", student_features, min_dim=3)
    _check_features("teacher_features", teacher_features, min_dim=3)
    _check_batch(student_features, teacher_features)
    s, t = student_features, teacher_features.detach()
    if s.shape[2:] != t.shape[2:]:
        if not resize:
            raise ValueError(
                f"attention maps of different sizes: student {tuple(s.shape[2:])} vs teacher "
                f"{tuple(t.shape[2:])}; choose layers of the same resolution or set resize: true"
            )
        if s.shape[2:].numel() > t.shape[2:].numel():
            s = F.adaptive_avg_pool2d(s, t.shape[2:])
        else:
            t = F.adaptive_avg_pool2d(t, s.shape[2:])
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def _pairwise_distances(e: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``e`` (0 on the diagonal, exactly)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)
    d = diff.pow(2).sum(dim=2)
    # sqrt has an infinite gradient at 0: the diagonal is masked out before the root.
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(eye, torch.zeros_like(d), d.masked_fill(eye, 1.0).sqrt())


def _normalized_distances(e: Tensor) -> Tensor:
    d = _pairwise_distances(e)
    positive = d[d > 0]
    mu = positive.mean() if positive.numel() else d.new_tensor(1.0)
    return d / mu


def _angles(e: Tensor) -> Tensor:
    """``cos`` of the angle at each vertex ``i`` between ``e_j - e_i`` and ``e_k - e_i``, for all
    triplets (0 where a difference is zero)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(e_j - e_i)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD (Park et al., CVPR 2019): distance-wise plus angle-wise relations.

    Embeddings are flattened to ``(N, D)``. Distance-wise: the pairwise Euclidean distances,
    each network's divided by its mean positive distance, compared with the smooth L1 (Huber,
    delta 1) loss averaged over all ``N**2`` pairs. Angle-wise: the cosines of the angles formed
    by every triplet (unit difference vectors), compared with the smooth L1 loss over all
    ``N**3`` triplets. The dimensions D of student and teacher may differ.
    """
    _check_features("student_embeddings", student_embeddings)
    _check_features("teacher_embeddings", teacher_embeddings)
    _check_batch(student_embeddings, teacher_embeddings)
    s = _upcast(student_embeddings).flatten(1)
    t = _upcast(teacher_embeddings.detach()).flatten(1).to(s.dtype)
    loss = s.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(
            _normalized_distances(s), _normalized_distances(t)
        )
    if angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


def _conditional_probabilities(e: Tensor) -> Tensor:
    unit = F.normalize(e, p=2, dim=1)
    kernel = (unit @ unit.t() + 1.0) / 2.0  # cosine similarity mapped to [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_features: Tensor, teacher_features: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis and Tefas, ECCV 2018).

    Features are flattened to ``(N, D)`` and L2-normalized; the cosine-similarity kernel mapped
    to [0, 1] (``(cos + 1) / 2``) gives, row by row, the conditional probability of each sample
    given another; the loss is the KL divergence of the teacher's conditional probabilities to
    the student's, ``p_t * log((p_t + eps) / (p_s + eps))``, averaged over all ``N**2``
    entries. The dimensions of student and teacher may differ.
    """
    _check_features("student_features", student_features)
    _check_features("teacher_features", teacher_features)
    _check_batch(student_features, teacher_features)
    s = _upcast(student_features).flatten(1)
    t = _upcast(teacher_features.detach()).flatten(1).to(s.dtype)
    p_s = _conditional_probabilities(s)
    p_t = _conditional_probabilities(t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _normalized_gram(f: Tensor) -> Tensor:
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def similarity_preserving_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung and Mori, ICCV 2019): the Gram matrices ``Q Q^T`` of the
    flattened features, each row L2-normalized, and the squared Frobenius norm of their
    difference divided by ``N**2``. The feature shapes of student and teacher may differ."""
    _check_features("student_features", student_features)
    _check_features("teacher_features", teacher_features)
    _check_batch(student_features, teacher_features)
    s = _upcast(student_features)
    t = _upcast(teacher_features.detach()).to(s.dtype)
    n = s.shape[0]
    return (_normalized_gram(s) - _normalized_gram(t)).pow(2).sum() / (n * n)
