"""Token-level distillation of language models: divergences between a teacher's and a
student's next-token distributions, averaged over the kept tokens of the whole batch.

Conventions (one for every function here):

* logits have shape ``(batch, seq, vocab)`` and are aligned with ``labels`` ``(batch, seq)``:
  position ``t`` predicts ``labels[:, t]`` (no shift inside);
* a position whose label is ``ignore_index`` is left out (padding, prompt tokens);
* both distributions are ``softmax(z / T)``; the per-token divergence is summed over the
  vocabulary, **averaged over the kept tokens of the whole batch** (not per sequence), and
  multiplied by ``T**2`` (its gradients then keep their scale as T changes, as Hinton's);
* everything is computed in float32 or wider (bf16 / fp16 inputs are upcast); a batch with no
  kept token is an error, not a NaN.

Kinds (``p_t``, ``p_s``: teacher and student): ``forward_kl`` KL(p_t || p_s); ``reverse_kl``
KL(p_s || p_t); ``jsd`` GKD's generalized Jensen-Shannon divergence with ``M = beta p_t + (1 -
beta) p_s``: ``beta KL(p_t || M) + (1 - beta) KL(p_s || M)``; ``skew_forward_kl`` KL(p_t || a p_t
+ (1 - a) p_s) and ``skew_reverse_kl`` KL(p_s || a p_s + (1 - a) p_t) (DistiLLM, ``a = skew``);
``tvd`` the total variation distance ``0.5 sum |p_t - p_s|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.validation import DivergenceKind, check_temperature

DIVERGENCES: tuple[str, ...] = get_args(DivergenceKind)


def _check_options(kind: str, temperature: float, beta: float, skew: float) -> float:
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}, got {kind!r}")
    t = check_temperature(temperature)
    if kind == "jsd" and not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(
            f"jsd needs 0 < beta < 1 (the mixture's teacher weight), got {beta!r}; its ends are "
            "forward_kl and reverse_kl"
        )
    if kind.startswith("skew") and not (isinstance(skew, (int, float)) and 0.0 <= skew < 1.0):
        raise ValueError(f"{kind} needs 0 <= skew < 1, got {skew!r}")
    return t


def _check_shapes(student_logits: Tensor, labels: Tensor, what: str = "student_logits") -> None:
    if student_logits.dim() != 3:
        raise ValueError(
            f"{what} must be (batch, seq, vocab), got shape {tuple(student_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(
            f"labels must be (batch, seq) = {tuple(student_logits.shape[:2])}, aligned with the "
            f"logits (position t predicts labels[:, t]); got {tuple(labels.shape)}"
        )


def _kept(labels: Tensor, ignore_index: int) -> Tensor:
    """The kept positions, flat; a batch with none is an error (its mean would be 0/0)."""
    mask = (labels != ignore_index).reshape(-1)
    if not bool(mask.any()):
        raise ValueError(
            f"every label of the batch is ignore_index ({ignore_index}): no token to distill on "
            "(all padding or prompt); drop such batches"
        )
    return mask


def _wide(x: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 upcast; float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """``log(w a + (1 - w) b)`` from log-probabilities, stably (w may be 0)."""
    if weight_a == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum_v p (log p - log q)`` per row; terms with ``p = 0`` count 0 (``xlogy``)."""
    p = log_p.exp()
    return (torch.special.xlogy(p, p) - p * log_q).sum(-1)


def divergence_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    kind: str,
    temperature: float,
    beta: float = 0.5,
    skew: float = 0.1,
) -> Tensor:
    """The divergence of each row of ``(tokens, vocab)`` logits, summed over the vocabulary
    (no ``T**2``, no averaging): the building block of :func:`token_divergence` and of the
    chunked :func:`fused_token_divergence`."""
    log_s = F.log_softmax(_wide(student_logits) / temperature, dim=-1)
    log_t = F.log_softmax(_wide(teacher_logits) / temperature, dim=-1)
    if kind == "forward_kl":
        return _kl(log_t, log_s)
    if kind == "reverse_kl":
        return _kl(log_s, log_t)
    if kind == "jsd":
        log_m = _log_mix(log_t, log_s, beta)
        return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)
    if kind == "skew_forward_kl":
        return _kl(log_t, _log_mix(log_t, log_s, skew))
    if kind == "skew_reverse_kl":
        return _kl(log_s, _log_mix(log_s, log_t, skew))
    if kind == "tvd":
        return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)
    raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}, got {kind!r}")


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    kind: DivergenceKind = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = -100,
) -> Tensor:
    """The ``kind`` divergence between the teacher's and the student's next-token distributions
    at ``temperature``, averaged over the kept tokens of the batch, times ``T**2`` (see the
    module's conventions). ``beta``: jsd's teacher weight in the mixture; ``skew``: the skewed
    KLs' mixing weight."""
    t = _check_options(kind, temperature, beta, skew)
    _check_shapes(student_logits, labels)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} differ; align vocabularies of different sizes on "
            "their shared ids first"
        )
    keep = _kept(labels, ignore_index)
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)[keep]
    te = teacher_logits.reshape(-1, vocab)[keep].detach()
    per_token = divergence_per_token(s, te, kind=kind, temperature=t, beta=beta, skew=skew)
    return per_token.mean() * (t * t)


def sparse_token_divergence(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Forward KL against a teacher given as its top-k tokens (a teacher cache): the teacher's
    distribution over k + 1 buckets is its k probabilities (``teacher_topk_logprobs``, already
    at ``temperature``) and the tail ``1 - sum``; the student's ``softmax(z / T)`` is folded onto
    the same buckets (its probabilities of the k ids, and the rest). Masked, averaged over the
    kept tokens and multiplied by ``T**2`` as :func:`token_divergence`."""
    t = check_temperature(temperature)
    _check_shapes(student_logits, labels)
    expected = (*student_logits.shape[:2],)
    if (
        teacher_topk_ids.shape[:2] != expected
        or teacher_topk_logprobs.shape != teacher_topk_ids.shape
    ):
        raise ValueError(
            f"teacher_topk_ids {tuple(teacher_topk_ids.shape)} and teacher_topk_logprobs "
            f"{tuple(teacher_topk_logprobs.shape)} must both be (batch, seq, k) with (batch, seq) "
            f"= {expected}"
        )
    keep = _kept(labels, ignore_index)
    vocab, k = student_logits.shape[-1], teacher_topk_ids.shape[-1]
    ids = checked_topk_ids(teacher_topk_ids.reshape(-1, k)[keep], vocab)
    per_token = sparse_divergence_per_token(
        student_logits.reshape(-1, vocab)[keep],
        ids,
        teacher_topk_logprobs.reshape(-1, k)[keep],
        temperature=t,
    )
    return per_token.mean() * (t * t)


def checked_topk_ids(ids: Tensor, vocab: int) -> Tensor:
    """A teacher's top-k token ids as int64, refused if any lies outside ``[0, vocab)``."""
    ids = ids.long()
    if bool((ids < 0).any()) or bool((ids >= vocab).any()):
        raise ValueError(f"teacher_topk_ids must be token ids in [0, {vocab}), got others")
    return ids


def sparse_divergence_per_token(
    student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, *, temperature: float
) -> Tensor:
    """The forward KL over the k + 1 buckets of each row of ``(tokens, vocab)`` logits against
    the teacher's ``(tokens, k)`` top-k ids (int64, checked) and log-probabilities at T (no
    ``T**2``, no averaging): the building block of :func:`sparse_token_divergence` and of the
    chunked head loss."""
    log_s = F.log_softmax(_wide(student_logits) / temperature, dim=-1)
    log_pt = _wide(topk_logprobs.detach())
    log_ps = log_s.gather(-1, topk_ids)
    # The student's tail from the tokens outside the k, not as 1 - sum: when the k cover nearly
    # all of its mass, 1 - sum is rounding noise, and the gradient of its log divides by it.
    log_ps_tail = torch.logsumexp(log_s.scatter(-1, topk_ids, float("-inf")), dim=-1)
    return _bucket_kl(log_pt, log_ps, log_ps_tail)


def sparse_kl_and_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    *,
    temperature: float,
    ce_weight: float,
    kl_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The labels' cross-entropy (at T = 1) and the forward KL over the teacher's k + 1 buckets
    (:func:`sparse_divergence_per_token`) of ``(tokens, vocab)`` logits, summed over the
    tokens, with the gradient of ``ce_weight * CE + kl_weight * KL`` with respect to the logits
    in closed form: a few passes over the logits instead of autograd's many (the cached
    distillation step of a large vocabulary costs little more than the labels' alone).

    With ``p = softmax(z / T)`` and ``b(j)`` the bucket of token ``j``, ``d KL / d z_j = p_j (1
    - q_b(j) / p_b(j)) / T``: ``(p_j - q_j) / T`` for the teacher's k tokens and ``p_j (1 -
    q_tail / p_tail) / T`` for the rest, where the student's tail mass is the sum over the
    tokens outside the k (not ``1 - sum``, which is rounding noise when the k hold nearly all
    of it). Returns ``(ce_sum, kl_sum, grad)``; ``labels`` and ``topk_ids`` are int64 in range.
    """
    z = _wide(logits.detach())
    zt = z if temperature == 1.0 else z / temperature
    log_s = F.log_softmax(zt, dim=-1)  # one fused kernel; its exp is the gradient's base
    if temperature == 1.0:
        ce = -log_s.gather(-1, labels.unsqueeze(-1)).sum()
    else:
        ce = (torch.logsumexp(z, dim=-1) - z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).sum()
    log_pk = log_s.gather(-1, topk_ids)
    pk = log_pk.exp()
    ps = log_s.exp_()  # the student's probabilities at T (becomes the gradient below)
    # The tail as 1 - sum of the k is exact enough where it holds >= 1% of the mass; below
    # that it is summed over the tokens outside the k (only for those rows).
    tail = (1.0 - pk.sum(-1)).clamp(min=0.0)
    small = tail < 0.01
    if bool(small.any()):
        tail[small] = ps[small].scatter(-1, topk_ids[small], 0.0).sum(-1)
    floor = torch.finfo(tail.dtype).tiny
    log_pt = _wide(topk_logprobs.detach())
    kl = _bucket_kl(log_pt, log_pk, tail.clamp(min=floor).log()).sum()
    # gradient: kl_scale * p (1 - q_tail / p_tail) everywhere, then the k tokens' own value
    # kl_scale * (p - q), plus the cross-entropy's softmax(z) - onehot(label)
    kl_scale = kl_weight / temperature
    q_tail = _tail(log_pt).exp()
    tail_scale = kl_scale * (1.0 - q_tail / tail.clamp(min=floor))
    top = kl_scale * (pk - log_pt.exp())
    if temperature == 1.0:  # one softmax for both: ps is softmax(z)
        grad = ps.mul_((tail_scale + ce_weight).unsqueeze(-1))
        grad.scatter_(-1, topk_ids, top + ce_weight * pk)
    else:
        grad = ps.mul_(tail_scale.unsqueeze(-1))
        grad.scatter_(-1, topk_ids, top)
        grad.add_(torch.softmax(z, dim=-1).mul_(ce_weight))
    if ce_weight:
        grad.scatter_add_(-1, labels.unsqueeze(-1), grad.new_full((len(labels), 1), -ce_weight))
    return ce, kl, grad.to(logits.dtype)


def teacher_topk(
    teacher_logits: Tensor, k: int, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """A teacher's ``k`` most likely tokens at each position and their log-probabilities at
    ``temperature`` (``log_softmax(z / T)``, computed in float32): ``(ids, logprobs)``, each
    ``(..., k)``, most likely first. What a token cache stores and
    :func:`sparse_token_divergence` reads."""
    t = check_temperature(temperature)
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}] (the vocabulary), got {k}")
    logprobs = F.log_softmax(_wide(teacher_logits.detach()) / t, dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values


def _tail(log_p: Tensor) -> Tensor:
    """``log(1 - sum exp(log_p))`` per row, clamped at a tiny mass (a float16 teacher's top-k
    may sum to a hair over 1)."""
    mass = log_p.exp().sum(-1).clamp(max=1.0)
    return torch.log1p(-mass).clamp(min=math.log(torch.finfo(log_p.dtype).tiny))


def _bucket_kl(log_pt: Tensor, log_ps: Tensor, log_ps_tail: Tensor) -> Tensor:
    """KL over the k + 1 buckets (the k tokens, then the tail) of teacher and student. An empty
    tail (k = the vocabulary) is the smallest mass on both sides, where it adds nothing."""
    floor = math.log(torch.finfo(log_ps.dtype).tiny)
    t_buckets = torch.cat([log_pt, _tail(log_pt).unsqueeze(-1)], dim=-1)
    s_buckets = torch.cat([log_ps, log_ps_tail.clamp(min=floor).unsqueeze(-1)], dim=-1)
    return _kl(t_buckets, s_buckets)


ChunkLoss = Callable[[Tensor, slice], "Tensor | tuple[Tensor, Tensor]"]
"""``chunk_loss(logits, rows)``: the summed loss of the rows ``rows`` of the flat kept tokens,
given their logits ``(rows, vocab)``; differentiable with respect to the logits, or the pair
``(loss, d loss / d logits)`` where the gradient is known in closed form."""


class _ChunkedHead(torch.autograd.Function):
    """Logits, loss and gradients chunk by chunk along the tokens: the forward pass computes
    each chunk's loss and its gradients with respect to the hidden states and the head weight
    at once and keeps only those (no chunk's logits outlive it); the backward pass scales them
    by the incoming gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        options: tuple[ChunkLoss, int, float, bool],
    ) -> Tensor:
        # needs_grad is decided by the caller: grad mode is always off in here
        chunk_loss, chunk, scale, needs_grad = options
        wide = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.zeros_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=wide) if needs_grad else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, min(start + chunk, hidden.shape[0]))
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(needs_grad)
                w = weight.detach().requires_grad_(needs_grad)
                logits = h @ w.T
                loss = chunk_loss(logits, rows)
                grad_logits = None
                if isinstance(loss, tuple):  # the loss's gradient, in closed form
                    loss, grad_logits = loss
                if needs_grad:
                    if grad_logits is not None:
                        gh, gw = torch.autograd.grad(logits, (h, w), grad_logits)
                    else:
                        gh, gw = torch.autograd.grad(loss, (h, w))
                    grad_hidden[rows] = gh  # type: ignore[index]
                    grad_weight += gw.to(wide)  # type: ignore[operator]
            total += loss.detach().to(wide)
        if needs_grad:
            ctx.save_for_backward(grad_hidden * scale, (grad_weight * scale).to(weight.dtype))  # type: ignore[operator]
        return total * scale

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_hidden * grad_output, grad_weight * grad_output, None


def chunked_head_loss(
    hidden: Tensor,
    head_weight: Tensor,
    chunk_loss: ChunkLoss,
    *,
    scale: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """``scale * sum_chunks chunk_loss(hidden[rows] @ head_weight.T, rows)`` without ever holding
    the full ``(tokens, vocab)`` logits: each chunk's logits, loss and gradients are computed
    together and only the gradients are kept (Liger-Kernel's chunked losses do the same).

    Args:
        hidden: ``(tokens, hidden)``, the kept tokens' last hidden states.
        head_weight: the output head ``(vocab, hidden)`` (no bias).
        chunk_loss: ``(logits, rows) -> summed loss`` of those rows, or ``(summed loss, its
            gradient with respect to the logits)`` (it may record what it likes of the logits,
            e.g. their argmax, as a side effect: it runs once per chunk).
        scale: a constant factor (``1 / tokens`` for a mean).
        chunk_size: tokens per chunk; ``None``: as many as keep one chunk's logits near 32 MiB
            of float32 (``2**23 / vocab``, at least 64).

    Gradients flow to ``hidden`` and ``head_weight``. Under ``torch.no_grad`` only the loss is
    computed.
    """
    if hidden.dim() != 2 or head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"hidden must be (tokens, hidden) and head_weight (vocab, hidden); got "
            f"{tuple(hidden.shape)} and {tuple(head_weight.shape)}"
        )
    if chunk_size is None:
        chunk_size = default_chunk_size(head_weight.shape[0])
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    return _ChunkedHead.apply(
        hidden, head_weight, (chunk_loss, chunk_size, float(scale), needs_grad)
    )


def default_chunk_size(vocab: int) -> int:
    """Tokens per chunk whose float32 logits take about 32 MiB (at least 64 tokens)."""
    return max(64, (1 << 23) // max(1, vocab))


def fused_token_divergence(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    teacher: Tensor | Sequence[Tensor],
    labels: Tensor,
    *,
    kind: DivergenceKind = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = -100,
    chunk_size: int = 256,
) -> Tensor:
    """:func:`token_divergence` of ``student_hidden @ student_head_weight.T`` without ever
    holding either model's full ``(tokens, vocab)`` logits: logits, loss and gradients are
    computed ``chunk_size`` kept tokens at a time.

    Args:
        student_hidden: the student's last hidden states ``(batch, seq, hidden)``.
        student_head_weight: its output head ``(vocab, hidden)`` (no bias).
        teacher: the teacher's logits ``(batch, seq, vocab)``, or the pair ``(teacher_hidden
            (batch, seq, hidden_t), teacher_head_weight (vocab, hidden_t))``.
        labels: ``(batch, seq)``, aligned with the positions (no shift inside).
        kind, temperature, beta, skew, ignore_index: as :func:`token_divergence`.
        chunk_size: kept tokens per chunk (peak extra memory ~ ``chunk_size * vocab`` floats).

    Gradients flow to ``student_hidden`` and ``student_head_weight``; the teacher is detached.
    """
    t = _check_options(kind, temperature, beta, skew)
    if student_hidden.dim() != 3 or student_head_weight.dim() != 2:
        raise ValueError(
            f"student_hidden must be (batch, seq, hidden) and student_head_weight (vocab, "
            f"hidden); got {tuple(student_hidden.shape)} and {tuple(student_head_weight.shape)}"
        )
    if student_head_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(
            f"the head weight {tuple(student_head_weight.shape)} does not take hidden states of "
            f"size {student_hidden.shape[-1]}"
        )
    vocab = student_head_weight.shape[0]
    if labels.shape != student_hidden.shape[:2]:
        raise ValueError(
            f"labels must be (batch, seq) = {tuple(student_hidden.shape[:2])}, got "
            f"{tuple(labels.shape)}"
        )
    keep = _kept(labels, ignore_index)
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])[keep]
    teacher_logits = teacher_hidden = teacher_weight = None
    if isinstance(teacher, Tensor):
        if teacher.shape != (*student_hidden.shape[:2], vocab):
            raise ValueError(
                f"teacher logits must be (batch, seq, vocab) = "
                f"{(*student_hidden.shape[:2], vocab)}, got {tuple(teacher.shape)}"
            )
        teacher_logits = teacher.reshape(-1, vocab)[keep].detach()
    else:
        teacher_hidden_3d, teacher_weight = teacher
        if (
            teacher_weight.shape[0] != vocab
            or teacher_hidden_3d.shape[:2] != student_hidden.shape[:2]
        ):
            raise ValueError(
                f"the teacher's hidden states {tuple(teacher_hidden_3d.shape)} and head "
                f"{tuple(teacher_weight.shape)} must cover the same (batch, seq) and vocabulary "
                f"({vocab}) as the student's"
            )
        teacher_hidden = teacher_hidden_3d.reshape(-1, teacher_hidden_3d.shape[-1])[keep].detach()
        teacher_weight = teacher_weight.detach()

    def chunk_loss(logits: Tensor, rows: slice) -> Tensor:
        if teacher_logits is not None:
            t_logits = teacher_logits[rows]
        else:
            with torch.no_grad():
                t_logits = teacher_hidden[rows] @ teacher_weight.T  # type: ignore[index,union-attr]
        return divergence_per_token(
            logits, t_logits, kind=kind, temperature=t, beta=beta, skew=skew
        ).sum()

    return chunked_head_loss(
        hidden, student_head_weight, chunk_loss, scale=(t * t) / hidden.shape[0],
        chunk_size=chunk_size,
    )  # fmt: skip
