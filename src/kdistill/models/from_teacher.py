"""A GPT student that starts as its teacher cut down (DistilBERT's initialization): the
teacher's widths, its token embedding, final norm and output head, and evenly spaced layers of
it (every other one at half the depth).

Teachers it reads: kdistill's own :class:`~kdistill.models.gpt.GPT`, and Hugging Face models of
the Llama architecture (SmolLM2, and the GGUF files transformers loads as Llama) behind
:class:`~kdistill.models.causal_lm.CausalLM`. A Llama layer maps onto a GPT block exactly: its
grouped key/value heads are repeated for the query heads that share them (what Llama's
attention does), so a student built with all the teacher's layers computes the teacher's
logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.gpt import GPT, Block

# the widths a student takes from its teacher; model.args may set only `layers`
TEACHER_WIDTHS = ("dim", "heads", "hidden", "rope_base", "norm_eps", "tie_embeddings")


def teacher_depth_and_widths(teacher: nn.Module) -> tuple[int, dict[str, Any]]:
    """The teacher's number of layers and the GPT arguments of its widths; a teacher whose
    architecture cannot be copied into a GPT is refused with the reason."""
    if isinstance(teacher, GPT):
        block = teacher.blocks[0]
        return len(teacher.blocks), {
            "dim": teacher.embed.embedding_dim,
            "heads": block.attn.heads,
            "hidden": block.mlp.gate.out_features,
            "rope_base": teacher.rope_base,
            "norm_eps": teacher.norm.eps,
            "tie_embeddings": teacher.head.weight is teacher.embed.weight,
        }
    config = _llama_config(teacher)
    return int(config.num_hidden_layers), {
        "dim": int(config.hidden_size),
        "heads": int(config.num_attention_heads),
        "hidden": int(config.intermediate_size),
        "rope_base": float(getattr(config, "rope_theta", None) or _rope_theta(config)),
        "norm_eps": float(config.rms_norm_eps),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


def kept_layers(teacher_layers: int, layers: int) -> list[int]:
    """The teacher's layers a student of ``layers`` layers starts from: evenly spaced from the
    first (0, 2, 4, ... at half the depth)."""
    if not 1 <= layers <= teacher_layers:
        raise ValueError(
            f"a student initialized from its teacher has 1 to {teacher_layers} layers (the "
            f"teacher's), got layers={layers}"
        )
    return [i * teacher_layers // layers for i in range(layers)]


def chosen_layers(teacher_layers: int, layers: Sequence[int]) -> list[int]:
    """The teacher's layers a user chose (``model.teacher_layers``), checked: distinct layer
    indices of the teacher, in increasing order."""
    chosen = list(layers)
    if (
        not chosen
        or any(not isinstance(i, int) or isinstance(i, bool) for i in chosen)
        or any(not 0 <= i < teacher_layers for i in chosen)
        or chosen != sorted(set(chosen))
    ):
        raise ValueError(
            f"model.teacher_layers must be distinct layers of the teacher in increasing order, "
            f"from 0 to {teacher_layers - 1}; got {chosen}"
        )
    return chosen


def student_args(
    teacher: nn.Module, args: Mapping[str, Any], layers: Sequence[int] | None = None
) -> dict[str, Any]:
    """The student's GPT arguments: the teacher's widths, ``layers`` from ``args`` (default: as
    many as the chosen ``layers``, else half the teacher's, rounded up). Widths in ``args`` are
    refused: they are the teacher's."""
    depth, widths = teacher_depth_and_widths(teacher)
    clashing = sorted(set(args) - {"layers"})
    if clashing:
        raise ValueError(
            f"model.args {', '.join(clashing)}: a student initialized from its teacher takes the "
            f"teacher's widths ({', '.join(f'{k}={v}' for k, v in widths.items())}); set only "
            "model.args.layers"
        )
    if layers is not None:
        chosen = chosen_layers(depth, layers)
        if "layers" in args and args["layers"] != len(chosen):
            raise ValueError(
                f"model.args.layers={args['layers']} but model.teacher_layers names "
                f"{len(chosen)} layers ({chosen}): give one of them"
            )
        return {**widths, "layers": len(chosen)}
    count = args.get("layers", (depth + 1) // 2)
    kept_layers(depth, count)  # checks the range
    return {**widths, "layers": count}


@torch.no_grad()
def copy_teacher_into(
    student: GPT, teacher: nn.Module, layers: Sequence[int] | None = None
) -> list[int]:
    """Copy the teacher's embedding, final norm, head and its ``layers`` (default: evenly
    spaced) into ``student`` (built with :func:`student_args`); returns the teacher layers
    used."""
    depth, _ = teacher_depth_and_widths(teacher)
    kept = (
        chosen_layers(depth, layers)
        if layers is not None
        else kept_layers(depth, len(student.blocks))
    )
    if len(kept) != len(student.blocks):
        raise ValueError(f"{len(kept)} teacher layers for a student of {len(student.blocks)}")
    if isinstance(teacher, GPT):
        student.embed.weight.copy_(teacher.embed.weight)
        student.norm.weight.copy_(teacher.norm.weight)
        if student.head.weight is not student.embed.weight:
            student.head.weight.copy_(teacher.head.weight)
        for block, i in zip(student.blocks, kept, strict=True):
            block.load_state_dict(teacher.blocks[i].state_dict())
        return kept
    llama = teacher.model  # type: ignore[union-attr]
    decoder = llama.get_decoder()
    student.embed.weight.copy_(decoder.embed_tokens.weight)
    student.norm.weight.copy_(decoder.norm.weight)
    if student.head.weight is not student.embed.weight:
        student.head.weight.copy_(llama.get_output_embeddings().weight)
    for block, i in zip(student.blocks, kept, strict=True):
        _copy_llama_layer(block, decoder.layers[i])
    return kept


def _copy_llama_layer(block: Block, layer: nn.Module) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    heads = block.attn.heads
    head_dim = attn.q_proj.weight.shape[0] // heads
    kv_heads = attn.k_proj.weight.shape[0] // head_dim
    dim = attn.q_proj.weight.shape[1]

    def repeated(w: Tensor) -> Tensor:  # each key/value head for the query heads sharing it
        return (
            w.view(kv_heads, head_dim, dim).repeat_interleave(heads // kv_heads, 0).reshape(-1, dim)
        )

    block.attn.qkv.weight.copy_(
        torch.cat([attn.q_proj.weight, repeated(attn.k_proj.weight), repeated(attn.v_proj.weight)])
    )
    block.attn.out.weight.copy_(attn.o_proj.weight)
    block.attn_norm.weight.copy_(layer.input_layernorm.weight)
    block.mlp_norm.weight.copy_(layer.post_attention_layernorm.weight)
    block.mlp.gate.weight.copy_(mlp.gate_proj.weight)
    block.mlp.up.weight.copy_(mlp.up_proj.weight)
    block.mlp.down.weight.copy_(mlp.down_proj.weight)


def _llama_config(teacher: nn.Module) -> Any:
    model = getattr(teacher, "model", None)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        raise ValueError(
            f"model.init_from_teacher copies a kdistill GPT or a Llama-architecture Hugging Face "
            f"model (SmolLM2); this teacher is {model_type or type(teacher).__name__}"
        )
    reasons = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        reasons.append("biases in its attention or feed-forward layers")
    if getattr(config, "hidden_act", "silu") != "silu":
        reasons.append(f"activation {config.hidden_act!r} (not silu)")
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    if kv is not None and heads % kv:
        reasons.append(f"{heads} attention heads do not share {kv} key/value heads evenly")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * heads != config.hidden_size:
        reasons.append(f"head_dim {head_dim} x {heads} heads is not the width {config.hidden_size}")
    scaling = getattr(config, "rope_scaling", None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        reasons.append(f"rotary scaling {scaling}")
    if reasons:
        raise ValueError(
            "model.init_from_teacher: the teacher's Llama layers cannot be copied into a GPT: "
            + "; ".join(reasons)
        )
    return config


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", 10_000.0))
