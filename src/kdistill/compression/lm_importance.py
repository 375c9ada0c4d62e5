"""How much each part of a Llama-family language model matters, measured from its activations on
a calibration sample (Minitron: Muralidharan et al. 2024, section 2.2).

* **attention heads**: the L2 norm of each query head's attention output (what enters
  ``o_proj``), summed over the calibration tokens;
* **MLP channels**: the magnitude of each intermediate channel (what enters ``down_proj``),
  summed over the tokens;
* **hidden (embedding) channels**: the magnitude of each channel of every RMSNorm's output
  (both norms of every layer and the final one), summed over the tokens and the norms;
* **layers**, two ways, as Minitron reports both: the perplexity of the calibration sample with
  the layer skipped (its output replaced by its input), and the mean cosine distance ``1 -
  cos(input, output)`` between the layer's input and output hidden states per token.

Only forward passes, without gradients: one to collect the activations and one more per layer
for the skipped-layer perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.causal_lm import CausalLM
from kdistill.types import IGNORE_INDEX


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama-family model: every layer has the same widths."""

    vocab: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @property
    def heads_per_group(self) -> int:
        """Query heads sharing one key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads

    def layer_params(self) -> int:
        """Parameters of one decoder layer (projections without bias, two norms)."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return q + kv + o + mlp + 2 * self.hidden

    def non_embedding_params(self) -> int:
        return self.layers * self.layer_params() + self.hidden

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.non_embedding_params()


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face ``*ForCausalLM`` itself (kdistill's :class:`CausalLM` unwrapped)."""
    return model.model if isinstance(model, CausalLM) else model


def decoder(model: nn.Module) -> nn.Module:
    """The Hugging Face decoder (``embed_tokens``, ``layers``, ``norm``) of a causal LM; a model
    of another structure is named."""
    get = getattr(hf_model(model), "get_decoder", None)
    found = get() if callable(get) else None
    if found is None or not all(hasattr(found, a) for a in ("embed_tokens", "layers", "norm")):
        raise ValueError(
            f"{type(model).__name__} is not a Llama-family causal LM (a decoder with "
            "embed_tokens, layers and norm)"
        )
    return found


def llama_shape(model: nn.Module) -> LlamaShape:
    config = hf_model(model).config
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return LlamaShape(
        vocab=int(config.vocab_size),
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        intermediate=int(config.intermediate_size),
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


@dataclass(frozen=True)
class Importance:
    """What :func:`activation_importance` measured (float64 on the CPU)."""

    heads: Tensor  # (layers, heads): query heads
    mlp: Tensor  # (layers, intermediate)
    hidden: Tensor  # (hidden,)
    layer_skipped_perplexity: Tensor  # (layers,): the sample's perplexity without the layer
    layer_cosine_distance: Tensor  # (layers,)
    perplexity: float  # the whole model's on the sample
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "perplexity": self.perplexity,
            "heads": self.heads.tolist(),
            "mlp": self.mlp.tolist(),
            "hidden": self.hidden.tolist(),
            "layer_skipped_perplexity": self.layer_skipped_perplexity.tolist(),
            "layer_cosine_distance": self.layer_cosine_distance.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Importance:
        def tensor(key: str, dims: int) -> Tensor:
            value = torch.tensor(data[key], dtype=torch.float64)
            if value.dim() != dims or not torch.isfinite(value).all():
                raise ValueError(f"importance {key!r} must be a finite {dims}-d array")
            return value

        return cls(
            heads=tensor("heads", 2),
            mlp=tensor("mlp", 2),
            hidden=tensor("hidden", 1),
            layer_skipped_perplexity=tensor("layer_skipped_perplexity", 1),
            layer_cosine_distance=tensor("layer_cosine_distance", 1),
            perplexity=float(data["perplexity"]),
            tokens=int(data["tokens"]),
        )

    def layer_table(self) -> list[dict[str, float]]:
        """One row per layer: what skipping it costs, its cosine distance, and the sums of its
        heads' and MLP channels' importance."""
        return [
            {
                "layer": i,
                "skipped_perplexity": float(self.layer_skipped_perplexity[i]),
                "cosine_distance": float(self.layer_cosine_distance[i]),
                "heads": float(self.heads[i].sum()),
                "mlp": float(self.mlp[i].sum()),
            }
            for i in range(self.heads.shape[0])
        ]


Batches = Iterable[tuple[Tensor, Tensor]]


@torch.no_grad()
def activation_importance(model: nn.Module, batches: Batches) -> Importance:
    """Measure every part's importance on ``batches`` of ``(ids, labels)`` (labels aligned with
    the positions, ``-100`` where no loss is taken); ``model`` is a Hugging Face Llama-family
    causal LM or kdistill's wrapper around one, in eval mode during the measurement."""
    batches = list(batches)
    if not batches:
        raise ValueError("activation importance needs at least one calibration batch")
    shape = llama_shape(model)
    dec = decoder(model)
    layers = list(dec.layers)
    heads = torch.zeros(shape.layers, shape.heads, dtype=torch.float64)
    mlp = torch.zeros(shape.layers, shape.intermediate, dtype=torch.float64)
    hidden = torch.zeros(shape.hidden, dtype=torch.float64)
    cosine = torch.zeros(shape.layers, dtype=torch.float64)
    hooks = []

    def per_token(x: Tensor) -> Tensor:
        return x.detach().reshape(-1, x.shape[-1]).double()

    def attention_input(i: int):  # what enters o_proj: (tokens, heads * head_dim)
        def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = per_token(args[0]).view(-1, shape.heads, shape.head_dim)
            heads[i] += x.norm(dim=-1).sum(0)

        return hook

    def mlp_input(i: int):
        def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            mlp[i] += per_token(args[0]).abs().sum(0)

        return hook

    def norm_output(_m: nn.Module, _args: Any, out: Tensor) -> None:
        hidden.add_(per_token(out).abs().sum(0))

    def layer_io(i: int):
        def hook(_m: nn.Module, args: tuple[Tensor, ...], kwargs: dict, out: Any) -> None:
            x = kwargs.get("hidden_states", args[0] if args else None)
            y = out[0] if isinstance(out, tuple) else out
            cosine[i] += (1 - F.cosine_similarity(per_token(x), per_token(y), dim=-1)).sum()

        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(attention_input(i)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_input(i)))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            hooks.append(norm.register_forward_hook(norm_output))
        hooks.append(layer.register_forward_hook(layer_io(i), with_kwargs=True))
    hooks.append(dec.norm.register_forward_hook(norm_output))
    was_training = model.training
    model.eval()
    try:
        base, tokens, positions = _perplexity(model, batches)
    finally:
        for h in hooks:
            h.remove()
    try:
        skipped = []
        for layer in layers:
            with _skipped(layer):
                skipped.append(_perplexity(model, batches)[0])
    finally:
        model.train(was_training)
    return Importance(
        heads=heads,
        mlp=mlp,
        hidden=hidden,
        layer_skipped_perplexity=torch.tensor(skipped, dtype=torch.float64),
        layer_cosine_distance=cosine / max(1, positions),
        perplexity=base,
        tokens=tokens,
    )


def calibration_sample(
    blocks: Any, tokens: int, batch_size: int = 8
) -> list[tuple[Tensor, Tensor]]:
    """The first batches of ``blocks`` (a split's packed blocks) shuffled with seed 0 that hold
    at least ``tokens`` labelled tokens, on the CPU: the same sample in every process."""
    from kdistill.data.text import TokenLoader

    out, seen = [], 0
    for batch in TokenLoader(blocks, batch_size, device="cpu", shuffle=True, seed=0):
        out.append((batch.inputs, batch.targets))
        seen += int((batch.targets != IGNORE_INDEX).sum())
        if seen >= tokens:
            break
    return out


def calibration_perplexity(model: nn.Module, batches: Batches) -> float:
    """The model's perplexity over the labelled tokens of ``batches`` (in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _perplexity(model, list(batches))[0]
    finally:
        model.train(was_training)


def _perplexity(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> tuple[float, int, int]:
    """The perplexity over the labelled tokens, their number, and all positions seen."""
    nll, tokens, positions = 0.0, 0, 0
    for ids, labels in batches:
        logits = _logits(model, ids)
        nll += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        tokens += int((labels != IGNORE_INDEX).sum())
        positions += ids.numel()
    if tokens == 0:
        raise ValueError("the calibration batches hold no labelled token")
    return math.exp(nll / tokens), tokens, positions


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    return hf_model(model)(input_ids=ids, use_cache=False).logits


@contextmanager
def _skipped(layer: nn.Module) -> Iterator[None]:
    """Within the block, ``layer`` passes its input hidden states through unchanged."""

    def identity(_m: nn.Module, args: tuple[Tensor, ...], kwargs: dict, out: Any) -> Any:
        x = kwargs.get("hidden_states", args[0] if args else None)
        return (x, *out[1:]) if isinstance(out, tuple) else x

    handle = layer.register_forward_hook(identity, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
