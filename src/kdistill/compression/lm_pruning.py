"""Structured pruning with removal of a Llama-family language model (SmolLM2's architecture):
whole layers, attention heads (grouped-query aware), MLP channels and hidden channels, to
explicit sizes or to a parameter count, chosen by activation importance
(:mod:`kdistill.compression.lm_importance`; Minitron's recipe). The result is a smaller model of
the same class and family, which saves and reloads as a normal ``hf:`` directory.

What is removed computes nothing in the pruned model, and the rest computes what it did: with
the removed parts zeroed (a head's ``o_proj`` columns, a channel's ``down_proj`` column, a hidden
channel's embedding column and ``o_proj`` / ``down_proj`` rows, a layer's two output
projections), the original model and the pruned one give the same logits. For hidden channels
that needs one correction: an RMSNorm divides by the root mean square over the channels it
sees, so each norm's weight is scaled by ``sqrt(hidden / kept)`` (the mean over fewer channels
of the same sum is larger by ``hidden / kept``).

Widths stay uniform across layers (every layer keeps the same number of heads and channels), as
a Hugging Face config describes one width for all; grouped-query attention keeps the same number
of query heads in every kept key/value group.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.compression.lm_importance import Importance, LlamaShape, hf_model, llama_shape

LAYER_METRICS = ("perplexity", "cosine")
AXES = ("depth", "width", "both")


@dataclass(frozen=True)
class PruneSizes:
    """The pruned model's sizes (``None``: keep the original's)."""

    layers: int | None = None
    hidden: int | None = None
    kv_heads: int | None = None
    heads_per_group: int | None = None
    intermediate: int | None = None

    def apply(self, shape: LlamaShape) -> LlamaShape:
        """The shape these sizes give ``shape``; out-of-range sizes are named."""
        limits = {
            "layers": shape.layers,
            "hidden": shape.hidden,
            "kv_heads": shape.kv_heads,
            "heads_per_group": shape.heads_per_group,
            "intermediate": shape.intermediate,
        }
        for name, most in limits.items():
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most
            ):
                raise ValueError(
                    f"pruned {name} must be an integer from 1 to {most}, got {value!r}"
                )
        kv = self.kv_heads or shape.kv_heads
        heads = kv * (self.heads_per_group or shape.heads_per_group)
        hidden = self.hidden or shape.hidden
        if hidden % heads:
            raise ValueError(
                f"pruned hidden={hidden} must be a multiple of the {heads} query heads (a "
                "Llama config requires it; the heads keep their width)"
            )
        return replace(
            shape,
            layers=self.layers or shape.layers,
            hidden=hidden,
            kv_heads=kv,
            heads=heads,
            intermediate=self.intermediate or shape.intermediate,
        )


def sizes_for_parameters(shape: LlamaShape, non_embedding: int, axis: str) -> PruneSizes:
    """Sizes whose non-embedding parameters come closest to ``non_embedding``:
    ``depth`` drops layers; ``width`` narrows the hidden and MLP widths by one factor (heads
    kept; the hidden width a multiple of their number); ``both`` takes half the reduction from each (the square root of the fraction)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    total = shape.non_embedding_params()
    if not 0 < non_embedding <= total:
        raise ValueError(
            f"the target of {non_embedding:,} non-embedding parameters must be positive and at "
            f"most the model's {total:,}"
        )
    fraction = non_embedding / total
    layers = shape.layers
    if axis == "depth":  # whole layers, beside the final norm
        return PruneSizes(
            layers=max(1, round((non_embedding - shape.hidden) / shape.layer_params()))
        )
    if axis == "both":
        layers = max(1, round(shape.layers * math.sqrt(fraction)))

    def narrowed(scale: float) -> PruneSizes:
        # hidden widths in whole multiples of the query heads, as a Llama config requires
        hidden = max(1, math.floor(shape.hidden * scale / shape.heads)) * shape.heads
        return PruneSizes(
            layers=layers if layers != shape.layers else None,
            hidden=hidden,
            intermediate=max(1, round(shape.intermediate * scale)),
        )

    def params(scale: float) -> int:
        return narrowed(scale).apply(shape).non_embedding_params()

    lo, hi = 0.0, 1.0  # the scales just under and just over the target
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) <= non_embedding else (lo, mid)
    closer = min((lo, hi), key=lambda scale: abs(params(scale) - non_embedding))
    return narrowed(closer)


@dataclass(frozen=True)
class PrunePlan:
    """What a pruned model keeps, as indices into the original's (each sorted ascending)."""

    layers: list[int]
    hidden: Tensor
    kv_heads: list[Tensor]  # per kept layer
    heads: list[Tensor]  # per kept layer: query heads, grouped by their kept key/value head
    intermediate: list[Tensor]  # per kept layer

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "hidden": self.hidden.tolist(),
            "kv_heads": [t.tolist() for t in self.kv_heads],
            "heads": [t.tolist() for t in self.heads],
            "intermediate": [t.tolist() for t in self.intermediate],
        }


def plan_pruning(
    importance: Importance,
    shape: LlamaShape,
    sizes: PruneSizes,
    *,
    layer_metric: str = "perplexity",
) -> PrunePlan:
    """Keep the most important parts at ``sizes``: the layers whose skipping costs the most
    perplexity (``layer_metric="perplexity"``) or that change their input most (``"cosine"``),
    the hidden channels, in each kept layer the key/value groups with the most important query
    heads and within each group its most important query heads, and the MLP channels."""
    if layer_metric not in LAYER_METRICS:
        raise ValueError(
            f"layer_metric must be one of {', '.join(LAYER_METRICS)}, got {layer_metric!r}"
        )
    target = sizes.apply(shape)
    measured = (importance.heads.shape, importance.mlp.shape, importance.hidden.shape)
    expected = ((shape.layers, shape.heads), (shape.layers, shape.intermediate), (shape.hidden,))
    if tuple(tuple(s) for s in measured) != expected:
        raise ValueError(
            "the importance was measured on another shape (heads, MLP channels, hidden: "
            f"{', '.join(str(tuple(s)) for s in measured)}) than this model's "
            f"({', '.join(str(s) for s in expected)})"
        )
    layer_scores = (
        importance.layer_skipped_perplexity
        if layer_metric == "perplexity"
        else importance.layer_cosine_distance
    )
    layers = sorted(_top(layer_scores, target.layers).tolist())
    kv_heads, heads, intermediate = [], [], []
    for i in layers:
        grouped = importance.heads[i].view(shape.kv_heads, shape.heads_per_group)
        groups = _top(grouped.sum(1), target.kv_heads)
        kv_heads.append(groups)
        heads.append(
            torch.cat(
                [
                    g * shape.heads_per_group + _top(grouped[g], target.heads_per_group)
                    for g in groups
                ]
            )
        )
        intermediate.append(_top(importance.mlp[i], target.intermediate))
    return PrunePlan(
        layers=layers,
        hidden=_top(importance.hidden, target.hidden),
        kv_heads=kv_heads,
        heads=heads,
        intermediate=intermediate,
    )


def _top(scores: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` largest scores, ascending (ties to the lower index)."""
    order = torch.argsort(-scores.double(), stable=True)[:k]
    return order.sort().values


# the parameters of a decoder layer this module knows how to slice; any other is refused
_LAYER_PARAMETERS = {
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
    "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.gate_proj.weight",
    "mlp.up_proj.weight", "mlp.down_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias",
    "mlp.down_proj.bias", "input_layernorm.weight", "post_attention_layernorm.weight",
}  # fmt: skip


@torch.no_grad()
def prune_llama(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A new model of ``model``'s class (the Hugging Face ``*ForCausalLM``; kdistill's wrapper is
    unwrapped) that keeps what ``plan`` keeps; ``model`` is left as it was."""
    hf = hf_model(model)
    shape = llama_shape(hf)
    config = hf.config
    kept_hidden = plan.hidden
    norm_scale = math.sqrt(shape.hidden / len(kept_hidden))
    d = shape.head_dim

    def rows_of_heads(heads: Tensor) -> Tensor:  # a projection's rows (outputs) of these heads
        return (heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)

    old = hf.state_dict()
    new: dict[str, Tensor] = {}
    for name, value in old.items():
        if ".layers." not in name:
            if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                new[name] = value[:, kept_hidden]
            elif name.endswith("norm.weight"):  # the final norm
                new[name] = value[kept_hidden] * norm_scale
            elif name.endswith("rotary_emb.inv_freq"):
                new[name] = value
            else:
                raise ValueError(f"pruning does not know the parameter {name!r}")
    prefix = next(n for n in old if ".layers." in n).split(".layers.")[0] + ".layers."
    for new_index, (layer, kv, q, mlp) in enumerate(
        zip(plan.layers, plan.kv_heads, plan.heads, plan.intermediate, strict=True)
    ):
        source, target = f"{prefix}{layer}.", f"{prefix}{new_index}."
        params = {n[len(source) :]: v for n, v in old.items() if n.startswith(source)}
        unknown = sorted(set(params) - _LAYER_PARAMETERS)
        if unknown:
            raise ValueError(
                f"pruning knows a Llama-family layer's projections and norms; layer {layer} also "
                f"has {', '.join(unknown)}"
            )
        q_rows, kv_rows = rows_of_heads(q), rows_of_heads(kv)
        for key, value in params.items():
            if key.endswith("layernorm.weight"):
                out = value[kept_hidden] * norm_scale
            elif key.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                rows = q_rows if "q_proj" in key else kv_rows
                out = value[rows][:, kept_hidden] if key.endswith("weight") else value[rows]
            elif key.startswith("self_attn.o_proj"):
                out = (
                    value[kept_hidden][:, q_rows] if key.endswith("weight") else value[kept_hidden]
                )
            elif key.startswith(("mlp.gate_proj", "mlp.up_proj")):
                out = value[mlp][:, kept_hidden] if key.endswith("weight") else value[mlp]
            else:  # mlp.down_proj
                out = value[kept_hidden][:, mlp] if key.endswith("weight") else value[kept_hidden]
            new[target + key] = out.clone()
    settings = config.to_dict()
    settings.update(
        num_hidden_layers=len(plan.layers),
        hidden_size=len(kept_hidden),
        num_attention_heads=len(plan.heads[0]),
        num_key_value_heads=len(plan.kv_heads[0]) if plan.kv_heads else shape.kv_heads,
        head_dim=d,
        intermediate_size=len(plan.intermediate[0]) if plan.intermediate else shape.intermediate,
    )
    if isinstance(settings.get("layer_types"), list):
        settings["layer_types"] = [settings["layer_types"][i] for i in plan.layers]
    settings.pop("transformers_version", None)
    pruned_config = type(config).from_dict(settings)
    pruned = type(hf)(pruned_config).to(dtype=next(hf.parameters()).dtype)
    missing, unexpected = pruned.load_state_dict(new, strict=False)
    tied = {"lm_head.weight"} if pruned_config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"the pruned model's parameters do not fit its class: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return pruned.eval()


def save_hf_directory(
    model: nn.Module,
    tokenizer: Any,
    directory: str | Path,
    *,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a Hugging Face causal LM (a pruned or merged one: safetensors and config) and its
    tokenizer as a directory that ``model.checkpoint`` and ``kdistill eval`` load; written beside
    it first and renamed into place, so that an interrupted save leaves no half-written model.
    An existing directory is not overwritten. ``write_extra(directory)`` adds files before the
    rename."""
    out = Path(directory)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new directory")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    hf_model(model).save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    if write_extra is not None:  # what else belongs with the model (its measurements)
        write_extra(partial)
    partial.rename(out)
    return out
