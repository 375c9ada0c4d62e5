"""Structured pruning of a Llama-family LM: importance from activations, removal that computes
what the masked model did, parameter targets, and a pruned model that saves and reloads."""

import copy
import math

import pytest
import torch

from kdistill.compression.lm_importance import Importance, activation_importance, llama_shape
from kdistill.compression.lm_pruning import (
    PrunePlan,
    PruneSizes,
    plan_pruning,
    prune_llama,
    save_hf_directory,
    sizes_for_parameters,
)
from kdistill.models.causal_lm import load_causal_lm

transformers = pytest.importorskip("transformers")
V = 48


def tiny_llama(seed=0, layers=4):
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=layers,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights larger than the init's, so that every part matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (3, 16), generator=g)
        labels = torch.roll(ids, -1, dims=1)
        labels[:, -1] = -100
        out.append((ids, labels))
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_importance_finds_what_computes_nothing():
    model = tiny_llama()
    shape = llama_shape(model)
    assert (shape.layers, shape.heads, shape.kv_heads, shape.heads_per_group) == (4, 6, 2, 3)
    layers = model.model.layers
    with torch.no_grad():
        layers[1].self_attn.q_proj.weight.zero_()  # ...still attends (uniformly): not silent
        layers[2].self_attn.v_proj.weight[8:16].zero_()  # kv head 1: its 3 query heads give 0
        layers[0].mlp.up_proj.weight[5].zero_()  # channel 5 of layer 0 gives 0
        layers[3].self_attn.o_proj.weight.zero_()  # layer 3 adds nothing...
        layers[3].mlp.down_proj.weight.zero_()  # ...to the residual stream
    imp = activation_importance(model, batches())
    assert imp.heads.shape == (4, 6) and imp.mlp.shape == (4, 40) and imp.hidden.shape == (24,)
    assert imp.tokens == 2 * 3 * 15
    assert torch.all(imp.heads[2, 3:6] == 0) and torch.all(imp.heads[2, :3] > 0)
    assert imp.mlp[0, 5] == 0 and torch.all(imp.mlp[0, :5] > 0)
    # skipping the silent layer changes nothing; its output is its input
    assert imp.layer_skipped_perplexity[3] == pytest.approx(imp.perplexity, rel=1e-9)
    assert imp.layer_cosine_distance[3] == pytest.approx(0.0, abs=1e-12)
    assert torch.all(imp.layer_cosine_distance[:3] > 1e-3)
    assert math.isclose(imp.perplexity, _perplexity(model, batches()), rel_tol=1e-6)
    assert Importance.from_dict(imp.to_dict()).to_dict() == imp.to_dict()
    assert [row["layer"] for row in imp.layer_table()] == [0, 1, 2, 3]


def _perplexity(model, data):
    nll = n = 0
    for ids, labels in data:
        z = logits(model, ids)
        nll += torch.nn.functional.cross_entropy(
            z.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        n += int((labels != -100).sum())
    return math.exp(float(nll) / n)


def masked(model, plan: PrunePlan):
    """The original model with everything ``plan`` drops zeroed where it enters the residual
    stream: the same function as the pruned model's."""
    m = copy.deepcopy(model)
    shape = llama_shape(model)
    d = shape.head_dim
    gone_hidden = sorted(set(range(shape.hidden)) - set(plan.hidden.tolist()))
    with torch.no_grad():
        m.model.embed_tokens.weight[:, gone_hidden] = 0
        for i, layer in enumerate(m.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if i not in plan.layers:
                attn.o_proj.weight.zero_()
                mlp.down_proj.weight.zero_()
                continue
            k = plan.layers.index(i)
            for h in sorted(set(range(shape.heads)) - set(plan.heads[k].tolist())):
                attn.o_proj.weight[:, h * d : (h + 1) * d] = 0
            for c in sorted(set(range(shape.intermediate)) - set(plan.intermediate[k].tolist())):
                mlp.down_proj.weight[:, c] = 0
            attn.o_proj.weight[gone_hidden] = 0
            mlp.down_proj.weight[gone_hidden] = 0
    return m


@pytest.mark.parametrize(
    "sizes",
    [
        PruneSizes(layers=2),
        PruneSizes(hidden=18),
        PruneSizes(kv_heads=1, heads_per_group=2),
        PruneSizes(intermediate=24),
        PruneSizes(layers=3, hidden=20, kv_heads=1, heads_per_group=2, intermediate=30),
    ],
)
def test_the_pruned_model_computes_what_the_masked_one_did(sizes, tmp_path):
    model = tiny_llama()
    shape = llama_shape(model)
    imp = activation_importance(model, batches())
    plan = plan_pruning(imp, shape, sizes)
    pruned = prune_llama(model, plan)
    target = sizes.apply(shape)
    assert llama_shape(pruned) == target
    assert sum(p.numel() for p in pruned.parameters()) == target.params()
    ids = batches(1, seed=5)[0][0]
    reference = logits(masked(model, plan), ids)
    torch.testing.assert_close(logits(pruned, ids), reference, rtol=1e-4, atol=1e-4)
    # the original is untouched
    torch.testing.assert_close(logits(model, ids), logits(tiny_llama(), ids))
    # saved as a Hugging Face directory, it loads as any hf: model does
    saved = save_hf_directory(pruned, None, tmp_path / "pruned")
    reloaded = load_causal_lm(saved)
    torch.testing.assert_close(reloaded(ids), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(FileExistsError, match="exists"):
        save_hf_directory(pruned, None, saved)


def test_the_most_important_parts_are_kept():
    model = tiny_llama()
    shape = llama_shape(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
        model.model.layers[0].self_attn.v_proj.weight[:8].zero_()  # kv group 0 of layer 0
    imp = activation_importance(model, batches())
    plan = plan_pruning(imp, shape, PruneSizes(layers=3, kv_heads=1), layer_metric="cosine")
    assert plan.layers == [0, 2, 3]  # the silent layer changes nothing: it goes
    assert plan.kv_heads[0].tolist() == [1] and plan.heads[0].tolist() == [3, 4, 5]
    # by perplexity: the layer whose skipping costs least goes (in a random model, skipping a
    # layer may even help: the silent one is not the least useful here)
    by_ppl = plan_pruning(imp, shape, PruneSizes(layers=3))
    cheapest = int(imp.layer_skipped_perplexity.argmin())
    assert by_ppl.layers == sorted(set(range(4)) - {cheapest})


def test_parameter_targets_and_bad_sizes():
    shape = llama_shape(tiny_llama())
    total = shape.non_embedding_params()
    for axis in ("depth", "width", "both"):
        sizes = sizes_for_parameters(shape, total // 2, axis)
        got = sizes.apply(shape).non_embedding_params()
        assert abs(got - total // 2) < 0.1 * total, (axis, sizes)
    assert sizes_for_parameters(shape, total // 2, "depth") == PruneSizes(layers=2)
    width = sizes_for_parameters(shape, total // 2, "width")
    assert width.layers is None and width.hidden % 6 == 0
    assert sizes_for_parameters(shape, total // 2, "both").layers == 3  # round(4 * sqrt(0.5))
    with pytest.raises(ValueError, match="axis must be one of depth, width, both"):
        sizes_for_parameters(shape, total // 2, "height")
    with pytest.raises(ValueError, match="at most the model's"):
        sizes_for_parameters(shape, total + 1, "depth")
    with pytest.raises(ValueError, match="pruned hidden must be an integer from 1 to 24, got 30"):
        PruneSizes(hidden=30).apply(shape)
    with pytest.raises(ValueError, match="hidden=16 must be a multiple of the 6 query heads"):
        PruneSizes(hidden=16).apply(shape)
    with pytest.raises(ValueError, match="layer_metric must be one of"):
        plan_pruning(activation_importance(tiny_llama(), batches(1)), shape, PruneSizes(),
                     layer_metric="loss")  # fmt: skip
