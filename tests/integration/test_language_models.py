"""Language-model runs end to end on text the tests write: scratch and distilled GPT students,
the token cache, resume, records, and what bad text gets."""

import json
import math

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import RunConfig, apply_overrides
from kdistill.experiment import run
from kdistill.experiment.loading import load_model

from .conftest import FAST, WORDS
from .test_engine import StopAt

QUIET = {"progress": False, "log": lambda _: None}


def lm_config(out, corpus, *overrides):
    return apply_overrides(
        RunConfig(),
        [
            f"out_dir={out}", "name=lm", "data.name=text", f"data.files=[{corpus}]",
            "data.block=16", "data.batch_size=8", "data.eval_batch_size=16",
            "model.arch=gpt_nano", "model.args={layers: 1, dim: 32, heads: 2}",
            "optim.name=adamw", "optim.lr=0.01", "train.epochs=2", "train.measure_latency=false",
            *FAST, *overrides,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("lm-teacher")
    cfg = lm_config(out, corpus, "name=teacher", "model.args={layers: 2, dim: 64, heads: 2}",
                    "train.epochs=4")  # fmt: skip
    return run(cfg, **QUIET)


def test_a_scratch_language_model_run_and_its_record(tmp_path, corpus):
    lines = []
    result = run(lm_config(tmp_path, corpus), progress=False, log=lines.append)
    record = result.record
    assert record.test_tokens > 0 and record.test_perplexity == pytest.approx(
        math.exp(record.test_loss)
    )
    # bytes: one byte per label token except the end-of-text tokens
    assert 0 < record.test_bits_per_byte < 8 and record.tokens_per_s > 0
    assert record.test_perplexity < 257  # it learned something
    assert any(line.startswith("text: ") and "bytes-utf8+eos" in line for line in lines)
    assert any("test ppl" in line for line in lines)
    model = load_model(result.run_dir).model
    assert model.vocab_size == 257 and model.context == 16


def test_eval_of_a_language_model_run(tmp_path, corpus, capsys):
    record = run(lm_config(tmp_path, corpus, "train.epochs=1"), **QUIET).record
    capsys.readouterr()
    assert main(["eval", record.run_dir, "--json", "--generate", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(record.test_perplexity, rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(record.test_bits_per_byte, rel=1e-6)
    assert out["tokens"] == record.test_tokens
    assert len(out["continuations"]) == 3
    assert all(isinstance(text, str) for text in out["continuations"].values())
    # the commands that handle images only say so, without a traceback
    assert main(["export", record.run_dir, "--out", str(tmp_path / "export")]) == 1
    assert "handles image data only" in capsys.readouterr().err
    assert main(["layers", "pydocs/gpt-distill"]) == 1
    assert "handles image data only" in capsys.readouterr().err


def test_distillation_from_a_language_model_teacher_online_and_cached(tmp_path, corpus, lm_teacher):
    teacher = f"kd.teachers=[{{checkpoint: {lm_teacher.run_dir}}}]"
    # SGD: Adam divides every gradient by its running size, which turns the two paths' rounding
    # differences (1e-7, tests/unit) into different steps on this tiny model
    base = ["kd.temperature=1.0", "kd.alpha=0.5", "kd.beta=0.5", "kd.teacher_precision=fp32",
            "optim.name=sgd", "optim.lr=0.3"]  # fmt: skip
    online = run(lm_config(tmp_path, corpus, teacher, *base), **QUIET).record
    assert online.teacher_test_perplexity == pytest.approx(lm_teacher.record.test_perplexity)
    assert online.teacher_test_bits_per_byte == pytest.approx(lm_teacher.record.test_bits_per_byte)
    assert online.test_agreement is not None
    # the student's and the teacher's greedy continuations of the fixed prompts
    assert set(online.continuations) == {"student", "teacher"}
    for said in online.continuations.values():
        assert len(said) == 3 and all(isinstance(text, str) for text in said.values())
    # chunk by chunk (7 tokens): the student's loss from its hidden states, the teacher's
    # logits from its own (a network of the registry); the same run to rounding
    chunked = run(lm_config(tmp_path, corpus, teacher, *base, "train.logit_chunk_tokens=7"),
                  **QUIET).record  # fmt: skip
    assert chunked.test_perplexity == pytest.approx(online.test_perplexity, rel=1e-4)
    assert chunked.test_agreement == pytest.approx(online.test_agreement, abs=0.01)
    # the teacher's top-257 tokens of a 257-token vocabulary at float32: the cache holds its
    # whole distribution, and the forward KL over its buckets is the full forward KL
    cached_cfg = lm_config(
        tmp_path, corpus, teacher, *base, "kd.teacher_cache.enabled=true",
        "kd.teacher_cache.topk=257", "kd.teacher_cache.dtype=float32",
    )  # fmt: skip
    lines = []
    cached = run(cached_cfg, progress=False, log=lines.append).record
    assert any("bytes per token" in line for line in lines)
    assert cached.test_perplexity == pytest.approx(online.test_perplexity, rel=1e-3)
    again = []
    run(cached_cfg, force=True, progress=False, log=again.append)
    assert any(line.startswith("teacher cache: reading") for line in again)
    for kind in ("reverse_kl", "jsd", "skew_forward_kl", "tvd"):
        record = run(lm_config(tmp_path, corpus, teacher, *base, f"kd.token_loss={kind}"),
                     **QUIET).record  # fmt: skip
        assert math.isfinite(record.test_perplexity)


def test_a_language_model_run_resumes_to_identical_weights(tmp_path, corpus, lm_teacher):
    teacher = f"kd.teachers=[{{checkpoint: {lm_teacher.run_dir}}}]"
    cfg = lm_config(tmp_path / "a", corpus, teacher, "kd.teacher_precision=fp32", "train.epochs=3")
    whole = run(cfg, **QUIET)
    split = lm_config(tmp_path / "b", corpus, teacher, "kd.teacher_precision=fp32",
                      "train.epochs=3")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(split, callbacks=[StopAt(2)], **QUIET)
    resumed = run(split, resume=True, **QUIET)
    a, b = load_model(whole.run_dir).model, load_model(resumed.run_dir).model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert resumed.record.test_perplexity == whole.record.test_perplexity


def test_bad_text_and_mismatched_models_are_named(tmp_path, corpus, capsys, lm_teacher):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    code = main(["train", "--out", str(tmp_path), "data.name=text", f"data.files=[{bad}]",
                 "model.arch=gpt_nano"])  # fmt: skip
    assert code == 1  # bad data, as for images
    assert "bad.jsonl:2 has neither a 'text' field" in capsys.readouterr().err
    code = main(["train", "--out", str(tmp_path), "data.name=text", "model.arch=gpt_nano"])
    assert code == 1 and "data.name=text needs data.files" in capsys.readouterr().err
    # a teacher with a shorter context than the run's blocks
    teacher = f"kd.teachers=[{{checkpoint: {lm_teacher.run_dir}}}]"
    cfg = lm_config(tmp_path, corpus, teacher, "data.block=32")
    with pytest.raises(ValueError, match="reads at most 16 tokens, but data.block is 32"):
        run(cfg, **QUIET)
    # an image model's policy on a language model: named, with the ones that apply
    with pytest.raises(ValueError, match="pruning is a policy of image models; a language mod"):
        lm_config(tmp_path, corpus, "policies=[{kind: pruning, target_sparsity: 0.5}]")
    record = json.loads((lm_teacher.run_dir / "summary.json").read_text())
    assert record["test_perplexity"] > 1


def test_two_processes_take_the_same_steps_as_one_over_unequal_token_counts(tmp_path):
    """Prompts of different lengths leave each process a different number of kept tokens: the
    step must still follow the mean over every kept token of the global batch."""
    import subprocess
    import sys

    from kdistill.experiment.loading import load_model as load

    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(80):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (30,), generator=g)]
        cut = int(torch.randint(1, 25, (1,), generator=g))
        rows.append({"prompt": " ".join(words[:cut]) + ": ", "completion": " ".join(words[cut:])})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = [
        sys.executable, "-m", "kdistill", "train", "--out", str(tmp_path), "-q",
        "data.name=text", f"data.files=[{data}]", "data.block=16", "data.batch_size=8",
        "data.drop_last=true", "model.arch=gpt_nano", "model.args={layers: 1, dim: 32, heads: 2}",
        "optim.name=sgd", "optim.lr=0.5", "optim.momentum=0.0", "optim.nesterov=false", "train.epochs=1",
        "train.deterministic=true", "train.measure_latency=false", "train.tensorboard=false",
        "train.logit_chunk_tokens=7",  # the chunked head, as at a large vocabulary
    ]  # fmt: skip
    one = subprocess.run([*common, "--name", "one"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [*common, "--name", "two", "--nproc", "2"], capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data-parallel training on 2 processes (gloo)" in two.stdout
    a, b = load(tmp_path / "one").model, load(tmp_path / "two").model
    # float sums in another order over 75 steps at lr 0.5 drift by ~3e-5 (weights of order 1);
    # weighing each process's mean alike instead would move every step by the processes'
    # token-count imbalance (tens of percent here)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-4, msg=name)
    ra = json.loads((tmp_path / "one" / "summary.json").read_text())
    rb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert rb["test_perplexity"] == pytest.approx(ra["test_perplexity"], rel=1e-4)


def test_demo_lm_compares_teacher_scratch_and_distilled(tmp_path, corpus, monkeypatch, capsys):
    """`kdistill demo lm`, its recipes swapped for small ones on the test corpus (the shipped
    recipes take about two minutes; tests/configs checks that they load and build)."""
    from kdistill.cli import demo

    common = (
        f"data: {{name: text, files: [{corpus}], block: 16, batch_size: 8}}\n"
        "optim: {name: adamw, lr: 0.01}\ntrain: {epochs: 2, measure_latency: false, "
        "tensorboard: false}\n"
    )
    recipes = {
        "teacher": "name: t\nmodel: {arch: gpt_nano, args: {layers: 2, dim: 64, heads: 2}}\n",
        "scratch": "name: s\nmodel: {arch: gpt_nano, args: {layers: 1, dim: 32, heads: 2}}\n",
        "distill": "name: d\nmodel: {arch: gpt_nano, args: {layers: 1, dim: 32, heads: 2}}\n"
        "kd: {teachers: [{checkpoint: runs/t}], alpha: 0.5, beta: 0.5}\n",
    }
    paths = []
    for role, text in recipes.items():
        path = tmp_path / f"{role}.yaml"
        path.write_text(text + common)
        paths.append(str(path))
    monkeypatch.setattr(demo, "LM_RECIPES", tuple(paths))
    assert main(["demo", "lm", "--out", str(tmp_path / "runs"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "test perplexity" in out and "bits/byte" in out
    assert "the student's test perplexity from" in out and "(teacher " in out
    # the report of the three runs: a language-model table and validation perplexity curves
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| test perplexity (mean ± std, range) | bits per byte |" in md
    rows = [row.split("|") for row in md.splitlines() if row.startswith("| ")]
    assert {"teacher", "scratch", "distilled"} <= {row[2].strip() for row in rows}
    # the distilled row names its teacher's perplexity on the same tokens: the teacher row's
    teacher_row = next(row for row in rows if row[2].strip() == "teacher")
    distilled_row = next(row for row in rows if row[2].strip() == "distilled")
    assert distilled_row[8].strip().startswith(teacher_row[5].strip().split(" ")[0])
    assert (tmp_path / "report" / "figures" / "perplexity.png").stat().st_size > 5000
    assert "Validation perplexity" in md and "Student-teacher agreement" in md
    assert "top-1 %" not in md  # no image-classifier columns
    # each prompt once, with the teacher run's, the scratch's and the distilled continuations
    said = md.split("## Greedy continuations")[1].split("## ")[0]
    assert said.count("**'The for statement is used to'**") == 1
    assert said.count("(teacher): ") == 3 and said.count("(distilled): ") == 3
    assert said.count("(scratch): ") == 3 and "- teacher: " not in said


def test_a_sweep_over_token_losses(tmp_path, corpus, lm_teacher, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"name: lm\ndata: {{name: text, files: [{corpus}], block: 16, batch_size: 8}}\n"
        "model: {arch: gpt_nano, args: {layers: 1, dim: 32, heads: 2}}\n"
        f"kd: {{teachers: [{{checkpoint: {lm_teacher.run_dir}}}], alpha: 0.5, beta: 0.5}}\n"
        "optim: {name: adamw, lr: 0.01}\n"
        "train: {epochs: 1, measure_latency: false, tensorboard: false}\n"
    )
    args = ["sweep", "--base", str(base), "--grid", "kd.token_loss=forward_kl,reverse_kl",
            "--out", str(tmp_path / "sweeps"), "--name", "kinds"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "sweeps" / "kinds" / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["ok", "ok"]
    assert all(r["test_perplexity_mean"] > 1 for r in summary["rows"])


def test_a_finished_language_model_run_is_reused_with_its_teacher_checked(
    tmp_path, corpus, lm_teacher
):
    from kdistill.experiment import train_or_reuse

    teacher = f"kd.teachers=[{{checkpoint: {lm_teacher.run_dir}}}]"
    cfg = lm_config(tmp_path, corpus, teacher, "train.epochs=1")
    first, reused = train_or_reuse(cfg, **QUIET)
    assert not reused
    again, reused = train_or_reuse(cfg, **QUIET)
    assert reused and again.record.test_perplexity == first.record.test_perplexity


def test_a_pretrained_teacher_with_another_tokenizer_is_refused(tmp_path, corpus):
    """A Hugging Face teacher directory brings its own tokenizer; data.tokenizer naming another
    (here bytes) is refused with both named, not aligned as if one vocabulary were padded."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *sorted(set(WORDS))])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    teacher_dir = tmp_path / "hf-teacher"
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>"
    ).save_pretrained(teacher_dir)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(teacher_dir)
    teacher = f"kd.teachers=[{{checkpoint: {teacher_dir}}}]"
    bytes_run = lm_config(tmp_path, corpus, teacher, "data.tokenizer=bytes")
    with pytest.raises(Exception, match=r"use different tokenizers \(hf:.* and bytes-utf8\+eos\)"):
        run(bytes_run, **QUIET)
    # with its own tokenizer (data.tokenizer: null) the same (untrained) teacher is taken
    own = run(lm_config(tmp_path, corpus, teacher, "train.epochs=1", "kd.min_teacher_top1=0",
                        "kd.teacher_precision=fp32"), **QUIET).record  # fmt: skip
    assert own.teacher_test_perplexity is not None and own.test_tokens > 0


def test_a_student_initialized_from_its_teachers_layers(tmp_path, corpus, lm_teacher):
    """model.init_from_teacher: the student takes the teacher's widths and every other layer,
    says so, starts far ahead of a random student, and resumes from its own checkpoint (whose
    record holds the widths its config does not give)."""
    teacher = f"kd.teachers=[{{checkpoint: {lm_teacher.run_dir}}}]"
    options = ["model.init_from_teacher=true", "model.args={}", "kd.teacher_precision=fp32",
               "data.batch_size=32", "train.epochs=2"]  # fmt: skip
    grown_cfg = lm_config(tmp_path / "grown", corpus, teacher, *options)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run(grown_cfg, callbacks=[StopAt(1)], progress=False, log=lines.append)
    said = [line for line in lines if line.startswith("student initialized from the teacher")]
    assert said and "layers 0 of 2" in said[0] and "dim=64" in said[0]
    grown = run(grown_cfg, resume=True, **QUIET)
    model = load_model(grown.run_dir).model
    assert len(model.blocks) == 1 and model.embed.embedding_dim == 64
    scratch = run(lm_config(tmp_path / "scratch", corpus, teacher, *options[1:-1],
                            "train.epochs=1"), **QUIET)  # fmt: skip

    def first_val_perplexity(result):
        first = (result.run_dir / "metrics.jsonl").read_text().splitlines()[0]
        return json.loads(first)["val"]["perplexity"]

    assert first_val_perplexity(grown) < first_val_perplexity(scratch)
    # a width in model.args, a student without a teacher: named
    with pytest.raises(ValueError, match="model.args dim: .* set only model.args.layers"):
        run(lm_config(tmp_path / "bad", corpus, teacher, *options[:1], "model.args={dim: 32}",
                      "kd.teacher_precision=fp32"), **QUIET)  # fmt: skip
    with pytest.raises(Exception, match="init_from_teacher .* needs a text dataset, the kd"):
        lm_config(tmp_path, corpus, "model.init_from_teacher=true")
    # the teacher's last layer rather than its first: said, and the student is one layer deep
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run(lm_config(tmp_path / "last", corpus, teacher, *options, "model.teacher_layers=[1]"),
            callbacks=[StopAt(1)], progress=False, log=lines.append)  # fmt: skip
    assert any("and layers 1 of 2" in line for line in lines)
    with pytest.raises(Exception, match="model.teacher_layers .* needs model.init_from_teacher"):
        lm_config(tmp_path, corpus, teacher, "model.teacher_layers=[1]")


def hf_model_dir(path, transformers, tokenizers, *, layers, seed):
    """A tiny Llama (grouped-query attention) with a word-level tokenizer of the corpus."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *sorted(set(WORDS))])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>"
    ).save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_a_pretrained_causal_lm_student_trains_resumes_and_evaluates(tmp_path, corpus, capsys):
    """model.checkpoint names a Hugging Face directory: the student starts from its weights,
    goes chunk by chunk, resumes to identical weights, and its model file rebuilds it."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    teacher_dir = hf_model_dir(tmp_path / "teacher", transformers, tokenizers, layers=2, seed=0)
    student_dir = hf_model_dir(tmp_path / "student", transformers, tokenizers, layers=1, seed=1)
    settings = [
        f"kd.teachers=[{{checkpoint: {teacher_dir}}}]", "kd.min_teacher_top1=0",
        "kd.teacher_precision=fp32", "model.arch=null", "model.args={}",
        f"model.checkpoint={student_dir}", "train.logit_chunk_tokens=7", "train.epochs=3",
    ]  # fmt: skip
    whole = run(lm_config(tmp_path / "a", corpus, *settings), **QUIET)
    assert whole.record.arch == "hf_causal_lm" and math.isfinite(whole.record.test_perplexity)
    split = lm_config(tmp_path / "b", corpus, *settings)
    with pytest.raises(KeyboardInterrupt):
        run(split, callbacks=[StopAt(2)], **QUIET)
    resumed = run(split, resume=True, **QUIET)
    a, b = load_model(whole.run_dir).model, load_model(resumed.run_dir).model
    assert type(a).__name__ == "CausalLM" and a.gives_last_hidden
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    capsys.readouterr()
    assert main(["eval", str(whole.run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(whole.record.test_perplexity, rel=1e-5)
    # what does not apply to a pretrained student is named
    wrong = lm_config(tmp_path / "c", corpus, *settings, "model.arch=gpt_nano")
    with pytest.raises(ValueError, match="is a pretrained causal LM: it is its own architecture"):
        run(wrong, **QUIET)


def test_prune_a_pretrained_model_and_recover_it_by_distillation(tmp_path, corpus, capsys):
    """kdistill prune measures a Llama's parts on the corpus and writes a smaller one, which a
    run then trains as its student, taught by the original."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    original = hf_model_dir(tmp_path / "original", transformers, tokenizers, layers=3, seed=0)
    calibration = ["--data", "text", "--files", str(corpus), "--block", "16", "--tokens", "200"]
    pruned = tmp_path / "pruned"
    args = ["prune", str(original), "--out", str(pruned), *calibration]
    assert main([*args, "--params", "0.5", "--axis", "both"]) == 0
    out = capsys.readouterr().out
    assert "perplexity if skipped" in out and "pruned: " in out
    summary = json.loads((pruned / "pruning.json").read_text())
    assert summary["pruned_shape"]["layers"] == 2  # round(3 * sqrt(0.5))
    assert summary["pruned_non_embedding_params"] < 0.6 * summary["non_embedding_params"]
    assert len(summary["layers"]) == 3 and (pruned / "importance.png").stat().st_size > 5000
    assert main([*args, "--layers", "1"]) == 1  # never over an existing directory
    assert "exists" in capsys.readouterr().err
    assert main([*args[: -len(calibration)], "--layers", "1", "--params", "0.5"]) == 2
    # without sizes it measures only
    measured = tmp_path / "measured"
    assert main(["prune", str(original), "--out", str(measured), *calibration]) == 0
    assert sorted(p.name for p in measured.iterdir()) == [
        "importance.json", "importance.png", "pruning.json"]  # fmt: skip
    # ... and that measurement prunes again without measuring: the same kept parts
    again = tmp_path / "again"
    reuse = ["--importance", str(measured / "importance.json"), "--params", "0.5", "--axis", "both"]
    capsys.readouterr()
    assert main(["prune", str(original), "--out", str(again), *calibration, *reuse]) == 0
    assert "measuring" not in capsys.readouterr().out
    assert json.loads((again / "pruning.json").read_text())["kept"] == summary["kept"]
    (tmp_path / "bad.json").write_text('{"heads": [1]}')
    bad = ["--importance", str(tmp_path / "bad.json"), "--layers", "1"]
    assert main(["prune", str(original), "--out", str(tmp_path / "x"), *calibration, *bad]) == 2
    assert "not an importance.json" in capsys.readouterr().err
    # the pruned model recovered by distillation from the original
    record = run(lm_config(tmp_path / "run", corpus, f"kd.teachers=[{{checkpoint: {original}}}]",
                           "kd.min_teacher_top1=0", "kd.teacher_precision=fp32", "model.arch=null",
                           "model.args={}", f"model.checkpoint={pruned}", "train.epochs=1"),
                 **QUIET).record  # fmt: skip
    assert record.arch == "hf_causal_lm" and record.params == summary["pruned_params"]
    assert math.isfinite(record.test_perplexity)
