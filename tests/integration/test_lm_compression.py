"""Compression of a language-model student inside its run, on a tiny Llama the tests make:
Minitron's pruning as a step of the schedule (recovered by distillation from the unpruned
model, resumed across the removal) and quantization-aware distillation against a
post-training baseline."""

import json
import math

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import load_config
from kdistill.experiment import run
from kdistill.experiment.loading import load_model

from .conftest import WORDS
from .test_engine import StopAt
from .test_language_models import QUIET, hf_model_dir, lm_config

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 documents of the words in their order from a random start, one in ten replaced at
    random: text with structure to learn (the shared corpus is words drawn independently)."""
    root = tmp_path_factory.mktemp("patterned")
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        start = int(torch.randint(0, len(WORDS), (1,), generator=g))
        words = [WORDS[(start + j) % len(WORDS)] for j in range(120)]
        for j in torch.nonzero(torch.rand(120, generator=g) < 0.1).flatten().tolist():
            words[j] = WORDS[int(torch.randint(0, len(WORDS), (1,), generator=g))]
        (root / f"doc{i:02d}.txt").write_text(" ".join(words) + ".\n")
    return root


@pytest.fixture(scope="module")
def llama(tmp_path_factory, corpus):
    """A tiny Llama (3 layers, grouped-query attention) trained on the corpus (so that rounding
    its weights costs perplexity and its parts differ in importance), as a Hugging Face
    directory: the teacher, and the student before compression."""
    path = hf_model_dir(tmp_path_factory.mktemp("llama"), transformers, tokenizers, layers=3,
                        seed=0)  # fmt: skip
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    text = " ".join(f.read_text() for f in sorted(corpus.iterdir()))
    ids = torch.tensor(tokenizer(text)["input_ids"])
    blocks = ids[: len(ids) // 17 * 17].view(-1, 17)
    model = transformers.LlamaForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = blocks[torch.randint(0, len(blocks), (16,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return path


def self_distillation(llama, *extra):
    """The pretrained model as the student, taught by itself unchanged (Minitron's setting)."""
    return [
        f"kd.teachers=[{{checkpoint: {llama}}}]", "kd.min_teacher_top1=0",
        "kd.teacher_precision=fp32", "model.arch=null", "model.args={}",
        f"model.checkpoint={llama}", *extra,
    ]  # fmt: skip


def interrupted_and_resumed(cfg, whole_model):
    """``cfg`` run, interrupted at the start of epoch 2 and resumed: its final weights are the
    uninterrupted run's (``whole_model``). Returns the resumed run."""
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], **QUIET)
    resumed = run(cfg, resume=True, **QUIET)
    b = load_model(resumed.run_dir).model
    pairs = zip(whole_model.state_dict().items(), b.state_dict().items(), strict=True)
    for (name, x), (_, y) in pairs:
        assert torch.equal(x, y), name
    return resumed


PRUNE = ("policies=[{kind: lm_pruning, params: 0.5, axis: both, calibration_tokens: 200, "
         "starting_epoch: 1}]")  # fmt: skip


def test_pruning_as_a_step_of_the_run_resumes_across_the_removal(tmp_path, corpus, llama, capsys):
    settings = self_distillation(llama, PRUNE, "train.epochs=3")
    whole = run(lm_config(tmp_path / "a", corpus, *settings), **QUIET)
    report = whole.record.compression["lm_pruning"]
    assert report["steps"] == 1 and report["axis"] == "both"
    assert report["params_after"] == whole.record.params < report["params_before"]
    assert report["non_embedding_params_after"] <= 0.6 * report["non_embedding_params_before"]
    assert report["shape_before"]["layers"] == 3 and report["shape_after"]["layers"] == 2
    assert math.isfinite(report["history"][0]["calibration_perplexity_after"])
    assert [row["layer"] for row in report["history"][0]["layers"]] == [0, 1, 2]
    # kdistill report shows the steps, the layer table and its figure
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## Pruning: " in page and "## Layer importance before pruning: " in page
    assert "### Layer importance before pruning" in page
    # the model file rebuilds the pruned architecture, and kdistill eval agrees with the record
    model = load_model(whole.run_dir).model
    assert sum(p.numel() for p in model.parameters()) == whole.record.params
    assert model.model.config.num_hidden_layers == 2
    # the best epoch is chosen among those after the cut: best.safetensors is a pruned model
    assert whole.record.best_epoch >= 1
    best = load_model(whole.run_dir / "best.safetensors").model
    assert best.model.config.num_hidden_layers == 2
    capsys.readouterr()
    assert main(["eval", str(whole.run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(whole.record.test_perplexity, rel=1e-5)
    # interrupted after the removal (its checkpoint holds the smaller model), then resumed
    resumed = interrupted_and_resumed(lm_config(tmp_path / "b", corpus, *settings), model)
    assert resumed.record.compression["lm_pruning"] == report


def test_gradual_pruning_reaches_its_target_in_steps(tmp_path, corpus, llama):
    """Two steps, the teacher read from its token cache (the pruned student is taught by the
    unpruned model's cached outputs)."""
    policy = ("policies=[{kind: lm_pruning, params: 0.5, calibration_tokens: 200, "
              "iterative_steps: 2}]")  # fmt: skip
    cached = ["kd.teacher_cache.enabled=true", "kd.teacher_cache.topk=4"]
    cfg = lm_config(tmp_path, corpus, *self_distillation(llama, policy, *cached))
    record = run(cfg, **QUIET).record
    assert record.teacher_cache is not None
    history = record.compression["lm_pruning"]["history"]
    sizes = [h["non_embedding_params"] for h in history]
    before = record.compression["lm_pruning"]["non_embedding_params_before"]
    assert len(sizes) == 2 and before > sizes[0] > sizes[1]
    assert sizes[1] == pytest.approx(before / 2, rel=0.15)


def test_language_model_policies_are_checked_before_training(tmp_path, corpus, llama):
    # a kdistill GPT is not a Llama-family Hugging Face model: named before anything runs
    gpt = lm_config(tmp_path / "gpt", corpus, "policies=[{kind: lm_pruning, params: 0.5}]")
    with pytest.raises(ValueError, match="lm_pruning prunes a Llama-family Hugging Face model"):
        run(gpt, **QUIET)
    too_many = self_distillation(llama, "policies=[{kind: lm_pruning, layers: 9}]")
    with pytest.raises(ValueError, match="layers"):
        run(lm_config(tmp_path / "big", corpus, *too_many), **QUIET)
    group = self_distillation(llama, "policies=[{kind: lm_quantization, group_size: 5}]")
    with pytest.raises(ValueError, match="group_size=5 does not divide"):
        run(lm_config(tmp_path / "group", corpus, *group), **QUIET)
    skip = self_distillation(llama, "policies=[{kind: lm_quantization, skip: [nothing]}]")
    with pytest.raises(ValueError, match="skip 'nothing' matches no Linear layer"):
        run(lm_config(tmp_path / "skip", corpus, *skip), **QUIET)
    with pytest.raises(ValueError, match="quantization is a policy of image models"):
        lm_config(tmp_path, corpus, "policies=[{kind: quantization}]")
    with pytest.raises(ValueError, match="lm_quantization is a policy of language models"):
        load_config("digits/scratch", values={"policies": [{"kind": "lm_quantization"}]})


def test_quantization_aware_distillation_beats_the_post_training_baseline(
    tmp_path, corpus, llama, capsys
):
    """2-bit weights: rounding the trained weights (no training) costs much perplexity; the same
    fake quantization trained by distillation from the full-precision model recovers it."""
    policy = "policies=[{kind: lm_quantization, weight_bits: 2, group_size: 16}]"
    settings = self_distillation(llama, policy, "optim.lr=0.003", "train.epochs=3")
    record = run(lm_config(tmp_path / "qad", corpus, *settings), **QUIET).record
    report = record.compression["lm_quantization"]
    assert report["setting"] == "w2g16" and report["layers"] == 3 * 7  # q k v o gate up down
    assert report["packed_bytes"] < report["fp32_bytes"]
    # the model file rebuilds the fake-quantized student: eval computes what the run did
    model = load_model(record.run_dir).model
    quantized = [m for m in model.modules() if type(m).__name__ == "FakeQuantizedLinear"]
    assert len(quantized) == 21
    weight = quantized[0].weight_fake_quantizer(quantized[0].weight)
    assert weight[0, :16].unique().numel() <= 4  # 2 bits: at most 4 levels per group
    capsys.readouterr()
    assert main(["eval", str(record.run_dir), "--json"]) == 0
    qad = json.loads(capsys.readouterr().out)["perplexity"]
    assert qad == pytest.approx(record.test_perplexity, rel=1e-5)
    # the post-training baseline: the same quantization of the untrained model, evaluated
    assert main(["eval", str(llama), "--data-root", str(corpus), "--dataset", "text",
                 "--block", "16", "--weight-bits", "2", "--group-size", "16", "--json"]) == 0  # fmt: skip
    ptq = json.loads(capsys.readouterr().out)
    assert ptq["quantization"] == "w2g16"
    assert main(["eval", str(llama), "--data-root", str(corpus), "--dataset", "text",
                 "--block", "16", "--json"]) == 0  # fmt: skip
    full = json.loads(capsys.readouterr().out)["perplexity"]
    assert ptq["perplexity"] > full and qad < ptq["perplexity"]


def test_a_student_with_low_rank_adapters_trains_resumes_and_merges(
    tmp_path, corpus, llama, capsys
):
    """model.lora: only the adapters train (the base weights stay the pretrained ones), the
    run resumes to the same weights, and kdistill merge writes a plain Hugging Face model that
    computes what the adapted student did."""
    pytest.importorskip("peft")
    settings = self_distillation(llama, "model.lora={rank: 4, alpha: 8}", "optim.lr=0.01",
                                 "train.epochs=3")  # fmt: skip
    said = []
    whole = run(lm_config(tmp_path / "a", corpus, *settings), progress=False, log=said.append)
    # the teacher is the student's own base (the same checkpoint), adapters off: one copy
    assert any("adapters off (one copy in memory)" in line for line in said)
    lora = whole.record.compression["lora"]
    assert lora["rank"] == 4 and lora["layers"] == 3 * 7
    # A (rank x in) and B (out x rank) of every adapted layer; nothing else trains
    assert 0 < lora["trainable_params"] < lora["params"] / 5
    model = load_model(whole.run_dir).model
    original = transformers.LlamaForCausalLM.from_pretrained(llama).state_dict()
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(model.model.state_dict()[f"{q}.base_layer.weight"], original[f"{q}.weight"])
    assert model.model.state_dict()[f"{q}.lora_B.default.weight"].abs().sum() > 0
    interrupted_and_resumed(lm_config(tmp_path / "b", corpus, *settings), model)
    # merged into a plain model of the same family, which evaluates to the same perplexity
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(whole.run_dir), "--out", str(merged)]) == 0
    assert "21 adapters merged" in capsys.readouterr().out
    assert main(["eval", str(merged), "--data-root", str(corpus), "--dataset", "text",
                 "--block", "16", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(whole.record.test_perplexity, rel=1e-4)
    assert main(["merge", str(whole.run_dir), "--out", str(merged)]) == 2  # never overwritten
    plain = llama_run(tmp_path, corpus, llama)
    assert main(["merge", str(plain.run_dir), "--out", str(tmp_path / "m2")]) == 2
    assert "has no low-rank adapters" in capsys.readouterr().err
    # the shared base teaches what the separately loaded teacher does
    assert whole.record.teacher_test_perplexity == pytest.approx(
        plain.record.teacher_test_perplexity, rel=1e-6
    )
    bad = self_distillation(llama, "model.lora={targets: [nothing]}")
    with pytest.raises(ValueError, match="model.lora.targets: 'nothing' matches no Linear"):
        run(lm_config(tmp_path / "bad", corpus, *bad), **QUIET)
    with pytest.raises(ValueError, match="model.lora with compression policies"):
        lm_config(tmp_path, corpus, *self_distillation(llama, "model.lora={rank: 2}", PRUNE))


def llama_run(tmp_path, corpus, llama):
    """A run of the pretrained student without adapters (one epoch)."""
    settings = self_distillation(llama, "train.epochs=1")
    return run(lm_config(tmp_path / "plain", corpus, *settings), **QUIET)


def test_the_adapted_students_base_reads_the_cache_its_model_built(tmp_path, corpus, llama):
    """The base under the adapters is the same teacher as the model loaded alone: a teacher
    cache built by one serves the other (same fingerprint)."""
    pytest.importorskip("peft")
    cached = self_distillation(llama, "kd.teacher_cache.enabled=true", "kd.teacher_cache.topk=4",
                               "train.epochs=1")  # fmt: skip
    run(lm_config(tmp_path, corpus, *cached), **QUIET)
    said = []
    run(lm_config(tmp_path, corpus, *cached, "model.lora={rank: 2}"), progress=False,
        log=said.append)  # fmt: skip
    assert any("adapters off" in line for line in said)
    assert any(line.startswith("teacher cache: reading") for line in said)
