"""Small GPT-style students for language-model distillation.

A decoder-only transformer in today's common form (the Llama family's, which SmolLM2 shares):
pre-normalization with RMSNorm, rotary position embeddings, causal self-attention through
PyTorch's fused ``scaled_dot_product_attention``, a SwiGLU feed-forward block, no biases, and
input embedding and output head tied (one matrix). Its vocabulary is the teacher's, so the
student's distribution over tokens can be compared with the teacher's token by token.

Besides logits, a model exposes its last hidden states and its output head
(:meth:`GPT.hidden_states`, :attr:`GPT.head`), which is what the fused token loss
(:func:`kdistill.losses.fused_token_divergence`) needs to avoid holding full logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotary_tables(context: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of shape ``(context, head_dim // 2)``: the rotation of each position for
    each pair of channels (Su et al. 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x`` ``(batch, heads, seq, head_dim)``: channel ``i`` of the first
    half pairs with channel ``i`` of the second (the "rotate half" layout of Llama)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, seq, dim))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads)
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """A decoder-only language model: token ids ``(batch, seq)`` in, logits
    ``(batch, seq, vocab)`` out, position ``t`` predicting token ``t + 1``.

    Args:
        vocab_size: tokens of the vocabulary (the teacher's).
        context: the longest sequence it takes (the rotary tables' length).
        dim: width of the residual stream.
        layers: transformer blocks.
        heads: attention heads (``dim`` must be a multiple; the head width must be even).
        hidden: width of the feed-forward block (default: 8/3 ``dim``, rounded up to 32).
        rope_base: the rotary embedding's base.
        norm_eps: the RMS norms' epsilon.
        tie_embeddings: one matrix for the input embedding and the output head.
    """

    # logits are exactly head(last hidden states): the chunked loss may compute them itself
    gives_last_hidden = True

    def __init__(
        self,
        vocab_size: int,
        context: int,
        *,
        dim: int,
        layers: int,
        heads: int,
        hidden: int | None = None,
        rope_base: float = 10_000.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("dim", dim),
                            ("layers", layers), ("heads", heads)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPT: {name} must be a positive integer, got {value!r}")
        if dim % heads or (dim // heads) % 2:
            raise ValueError(
                f"GPT: dim={dim} must split into {heads} heads of an even width "
                f"(dim / heads = {dim / heads:g})"
            )
        hidden = hidden if hidden is not None else 32 * math.ceil(8 * dim / 3 / 32)
        self.vocab_size, self.context = vocab_size, context
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, norm_eps) for _ in range(layers))
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.rope_base = float(rope_base)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rotary_tables(context, dim // heads, rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2)
            for proj in (block.attn.out, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        """The last hidden states ``(batch, seq, dim)``, normalized: what the head reads."""
        if input_ids.shape[-1] > self.context:
            raise ValueError(
                f"a sequence of {input_ids.shape[-1]} tokens is longer than this model's context "
                f"of {self.context}"
            )
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.norm(x)

    def forward(self, input_ids: Tensor, *, last_hidden: bool = False) -> Tensor:
        """Logits ``(batch, seq, vocab)``; with ``last_hidden=True`` the hidden states the head
        reads instead (what the chunked token loss computes the logits from)."""
        hidden = self.hidden_states(input_ids)
        return hidden if last_hidden else self.head(hidden)


# Sizes of the registry's students; parameters at SmolLM2's vocabulary of 49,152 (most of them
# in the tied embedding): nano 3.3M, micro 7.1M, mini 17M, small 30M.
GPT_SIZES: dict[str, dict[str, int]] = {
    "gpt_nano": {"dim": 64, "layers": 2, "heads": 2},
    "gpt_micro": {"dim": 128, "layers": 4, "heads": 4},
    "gpt_mini": {"dim": 256, "layers": 6, "heads": 4},
    "gpt_small": {"dim": 384, "layers": 6, "heads": 6},
}


def build_gpt(vocab_size: int, context: int, **args: Any) -> GPT:
    return GPT(vocab_size, context, **args)


LANGUAGE_MODELS: dict[str, Callable[..., GPT]] = {
    name: partial(build_gpt, **size) for name, size in GPT_SIZES.items()
}


def build_language_model(
    arch: str, vocab_size: int, context: int, args: Mapping[str, Any] | None = None
) -> GPT:
    """A registry language model for ``vocab_size`` tokens and sequences up to ``context``;
    ``args`` override its size (``dim``, ``layers``, ``heads``, ``hidden``) or settings."""
    if arch not in LANGUAGE_MODELS:
        raise ValueError(
            f"unknown language model {arch!r}; choose one of {', '.join(LANGUAGE_MODELS)}"
        )
    builder = LANGUAGE_MODELS[arch]
    assert isinstance(builder, partial)
    allowed = {*builder.keywords, "hidden", "rope_base", "norm_eps", "tie_embeddings"}
    unknown = sorted(set(args or {}) - allowed)
    if unknown:
        raise ValueError(
            f"language model {arch!r} has no argument(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(allowed))}"
        )
    return build_gpt(vocab_size, context, **{**builder.keywords, **dict(args or {})})
