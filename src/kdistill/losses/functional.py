"""Distillation math as pure tensor functions: tensors in, tensors out; no state, no I/O.

Shapes: logits and probabilities are ``(N, C)`` or ``(N, C, d1, ...)`` (class dimension 1, as
in :func:`torch.nn.functional.cross_entropy`); targets are ``(N,)`` or ``(N, d1, ...)``. Extra
dimensions are treated as more samples. Half-precision inputs are upcast to float32 inside;
float64 inputs stay float64 (the reference tests use it).

The distillation term is ``KL(softmax(z_t / T) || softmax(z_s / T))`` summed over classes and
averaged over samples. It has the same gradient with respect to the student as Hinton's
cross-entropy against soft targets, but is 0 when the student matches the teacher, which makes
it readable in logs. Its gradient shrinks like ``1 / T**2``; :func:`distillation_loss` multiplies
it by ``T**2`` (Hinton et al. 2015, section 2) so that changing T does not change the balance
between the soft and hard terms. The ``"distill"`` part it reports is the KL *without* ``T**2``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.types import LossOutput, TeacherOutput
from kdistill.validation import check_temperature, resolve_weights, same_temperature

__all__ = [
    "check_temperature",
    "distillation_loss",
    "gradient_norms",
    "log_softmax_with_temperature",
    "resolve_weights",
    "soft_target_kl",
    "softmax_with_temperature",
    "student_cross_entropy",
]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")

# Probabilities handed in by users (caches, ensembles) are float16 round-trips at best.
_PROB_SUM_TOLERANCE = 1e-2


# --------------------------------------------------------------------------- validation


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (this synchronizes with the device)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s) out of {x.numel()}; the loss would be "
            "meaningless. Check the model's output (learning rate too high? bad input?)"
        )


def check_class_scores(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating tensor shaped ``(N, C, ...)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(student: Tensor, teacher: Tensor, teacher_name: str) -> None:
    """Raise ``ValueError`` when student and teacher scores disagree in shape or class count."""
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"student has {student.shape[1]} classes but {teacher_name} has {teacher.shape[1]} "
            f"(shapes {tuple(student.shape)} vs {tuple(teacher.shape)}); both must predict the "
            "same classes in the same order"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits shape {tuple(student.shape)} does not match {teacher_name} shape "
            f"{tuple(teacher.shape)}"
        )


def check_targets(targets: Tensor, logits: Tensor, ignore_index: int) -> None:
    """Raise ``ValueError`` if labels are not integer class indices in range for ``logits``."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must hold integer class indices (dtype int64), got dtype {targets.dtype}"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape "
            f"{tuple(logits.shape)}; expected {expected}"
        )
    num_classes = logits.shape[1]
    valid = targets != ignore_index
    if bool(valid.any()):
        used = targets[valid]
        lo, hi = int(used.min()), int(used.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"target label {bad} is out of range: valid labels are 0..{num_classes - 1} "
                f"(or ignore_index={ignore_index})"
            )


def check_probabilities(name: str, probs: Tensor) -> None:
    """Raise ``ValueError`` unless ``probs`` is non-negative and sums to 1 over dimension 1."""
    if bool((probs < 0).any()):
        raise ValueError(f"{name} has negative entries; probabilities must be >= 0")
    sums = probs.sum(dim=1)
    worst = float((sums - 1).abs().max()) if sums.numel() else 0.0
    if worst > _PROB_SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 over the class dimension; worst row is off by {worst:.3g}. "
            "Pass logits as a plain tensor, or TeacherOutput(probs=..., temperature=T) for "
            "probabilities"
        )


# --------------------------------------------------------------------------- helpers


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 for numerically safe softmax; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _flatten(scores: Tensor) -> Tensor:
    """``(N, C, d1, ...)`` -> ``(N * d1 * ..., C)``; ``(N, C)`` unchanged."""
    if scores.dim() == 2:
        return scores
    return scores.movedim(1, -1).reshape(-1, scores.shape[1])


def _reduce(per_sample: Tensor, reduction: Reduction, count: Tensor | int | None = None) -> Tensor:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    n = per_sample.numel() if count is None else count
    if isinstance(n, Tensor):
        return total / n.clamp(min=1)
    return total / max(n, 1)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


# --------------------------------------------------------------------------- the math


def softmax_with_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(logits / T)`` over dimension 1, computed in at least float32."""
    return F.softmax(_upcast(logits) / temperature, dim=1)


def log_softmax_with_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / T)`` over dimension 1, computed in at least float32."""
    return F.log_softmax(_upcast(logits) / temperature, dim=1)


def student_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy of ``softmax(logits)`` (T=1) against hard labels.

    Samples whose target is ``ignore_index`` contribute nothing. With ``reduction="mean"`` the
    sum is divided by the number of labelled samples; a batch with no labelled sample gives 0
    (still connected to the graph, so ``backward()`` works and yields zero gradients) instead of
    PyTorch's NaN.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        targets: ``(N,)`` or ``(N, d1, ...)`` integer labels.
        ignore_index: label value that marks an unlabelled sample.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, 0 where ignored).

    Returns:
        Scalar (``mean``/``sum``) or ``(N * d1 * ...,)`` per-sample tensor (``none``).
    """
    _check_reduction(reduction)
    flat = _flatten(_upcast(logits))
    flat_targets = targets.reshape(-1)
    per_sample = F.cross_entropy(flat, flat_targets, ignore_index=ignore_index, reduction="none")
    count = (flat_targets != ignore_index).sum()
    return _reduce(per_sample, reduction, count)


def soft_target_kl(
    student_logits: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    teacher_probs: Tensor | None = None,
    temperature: float,
    reduction: Reduction = "mean",
) -> Tensor:
    """``KL(p_t || p_s)`` with ``p = softmax(z / T)``, summed over classes.

    This is the *unscaled* distillation term: multiply by ``T**2`` to keep its gradient scale
    independent of T (:func:`distillation_loss` does). The teacher side is detached: no gradient
    ever flows into the teacher through this term.

    Args:
        student_logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        teacher_logits: same shape as ``student_logits``; exclusive with ``teacher_probs``.
        teacher_probs: teacher probabilities **already at temperature T**, same shape.
        temperature: T > 0.
        reduction: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (per sample).

    Returns:
        Scalar, or ``(N * d1 * ...,)`` per-sample values for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if (teacher_logits is None) == (teacher_probs is None):
        raise ValueError("give exactly one of teacher_logits= and teacher_probs=")
    log_p_s = _flatten(log_softmax_with_temperature(student_logits, temperature))
    if teacher_logits is not None:
        log_p_t = _flatten(log_softmax_with_temperature(teacher_logits.detach(), temperature))
        # exp(log_p_t) * (log_p_t - log_p_s), elementwise in one fused kernel (and its backward)
        per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    else:
        p_t = _flatten(_upcast(teacher_probs.detach()))  # type: ignore[union-attr]
        # xlogy gives 0 * log(0) = 0, so top-k or one-hot soft targets are fine.
        per_sample = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=1)
    return _reduce(per_sample, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher: Tensor | TeacherOutput,
    targets: Tensor | None,
    *,
    temperature: float,
    alpha: float,
    beta: float | None = None,
    scale_by_t2: bool = True,
    ignore_index: int = -100,
    teacher_weight: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    """Hinton's distillation objective.

    ``total = alpha * CE(y, softmax(z_s)) + beta * T**2 * KL(p_t || p_s)
    (+ teacher_weight * CE(y, softmax(z_t)))``, where the ``T**2`` factor is applied only when
    ``scale_by_t2``.

    Args:
        student_logits: ``(N, C)`` (or ``(N, C, d1, ...)``) student scores.
        teacher: a tensor of teacher **logits**, or a :class:`TeacherOutput` carrying logits or
            probabilities (probabilities must have been made at this ``temperature``).
        targets: hard labels, ``(N,)``; may be ``None`` only when ``alpha == 0`` and
            ``teacher_weight == 0`` (pure soft-target training on unlabelled data).
        temperature: distillation temperature T > 0.
        alpha: weight of the student (hard-label) loss.
        beta: weight of the distillation loss; ``None`` means ``1 - alpha``.
        scale_by_t2: multiply the distillation term by ``T**2`` (Hinton 2015, section 2).
        ignore_index: label marking unlabelled samples. It masks the hard-label terms only; the
            distillation term uses every sample, because the teacher labels them all (the
            "transfer set" may be unlabelled).
        teacher_weight: weight of the teacher's own cross-entropy (joint training, Mishra and
            Marr's scheme A). Needs teacher logits that carry gradient; the soft targets stay
            detached, so the distillation term never moves the teacher.
        validate: also check the values: labels in range, no NaN/Inf, probabilities summing to
            1 (each check synchronizes with the device; shapes are always checked).

    Returns:
        :class:`LossOutput` with unweighted parts ``"student"`` (CE at T=1), ``"distill"``
        (KL at T, without ``T**2``) and, in joint mode, ``"teacher"``.
    """
    # the temperature and weights are plain numbers: checking them on every call costs no
    # device synchronization
    t = check_temperature(temperature)
    alpha, beta, teacher_weight = resolve_weights(alpha, beta, teacher_weight)
    out = teacher if isinstance(teacher, TeacherOutput) else None
    if out is None:
        if not isinstance(teacher, Tensor):
            raise ValueError(
                "teacher must be a tensor of logits or a TeacherOutput, got "
                f"{type(teacher).__name__}"
            )
        out = TeacherOutput(logits=teacher)
    if out.probs is not None and not same_temperature(out.temperature, t):  # type: ignore[arg-type]
        raise ValueError(
            f"teacher probabilities were computed at temperature {out.temperature} but the loss "
            f"uses temperature {t}; recompute them at T={t} (or pass logits)"
        )
    if teacher_weight > 0 and out.logits is None:
        raise ValueError(
            f"teacher_weight={teacher_weight} trains the teacher on its own labels, which needs "
            "teacher logits, but the teacher gave probabilities"
        )
    if targets is None and (alpha > 0 or teacher_weight > 0):
        raise ValueError(
            f"targets are required when alpha ({alpha}) or teacher_weight ({teacher_weight}) > 0"
        )
    teacher_name = "teacher logits" if out.logits is not None else "teacher probabilities"
    check_class_scores("student_logits", student_logits)
    check_class_scores(teacher_name, out.scores)
    check_same_shape(student_logits, out.scores, teacher_name)
    if validate:
        check_finite("student_logits", student_logits)
        check_finite(teacher_name, out.scores)
        if out.probs is not None:
            check_probabilities("teacher probabilities", _flatten(out.probs))
        if targets is not None:
            check_targets(targets, student_logits, ignore_index)

    parts: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    if targets is not None:
        parts["student"] = student_cross_entropy(student_logits, targets, ignore_index=ignore_index)
        weights["student"] = alpha
    parts["distill"] = soft_target_kl(
        student_logits, teacher_logits=out.logits, teacher_probs=out.probs, temperature=t
    )
    weights["distill"] = beta * (t * t if scale_by_t2 else 1.0)
    if teacher_weight > 0:
        parts["teacher"] = student_cross_entropy(out.logits, targets, ignore_index=ignore_index)  # type: ignore[arg-type]
        weights["teacher"] = teacher_weight

    total = sum(parts[k] * w for k, w in weights.items() if w != 0.0)
    if not isinstance(total, Tensor):  # every weight was 0 for the parts present
        total = parts["distill"] * 0.0
    return LossOutput(total=total, parts=parts, weights=weights)


def gradient_norms(terms: dict[str, Tensor], student_logits: Tensor) -> dict[str, float]:
    """The norm of each term's gradient with respect to the student's logits.

    Used to compare how hard the distillation loss pulls on the student with a plain
    cross-entropy gradient: with a confident teacher the ``T**2``-scaled soft term can give
    gradients several times larger, which a learning rate tuned for cross-entropy may not
    survive. ``student_logits`` must be the tensor the terms were computed from, with
    ``requires_grad=True``.
    """
    norms = {}
    for name, term in terms.items():
        (grad,) = torch.autograd.grad(term, student_logits, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if grad is None else float(grad.norm())
    return norms
