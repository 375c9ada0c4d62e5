"""Sequence-level distillation on a tiny Llama the tests make: the teacher's completions of the
training text's prompts, generated in chunks that survive a kill, reused by later runs, and
trained on."""

import json

import pytest
import torch

from kdistill.config.schema import SequenceLevelConfig
from kdistill.data.errors import DataError
from kdistill.data.text import Document, paragraph_prompts, read_documents
from kdistill.experiment import generations, run

from .conftest import WORDS
from .test_language_models import hf_model_dir, lm_config

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory):
    """30 documents of 3 paragraphs of 3 sentences each."""
    root = tmp_path_factory.mktemp("paragraphs")
    g = torch.Generator().manual_seed(0)

    def sentence():
        n = int(torch.randint(4, 9, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))

    for d in range(30):
        text = "\n\n".join(" ".join(sentence() + "." for _ in range(3)) for _ in range(3))
        (root / f"doc{d:02d}.txt").write_text(text + "\n")
    return root


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return hf_model_dir(tmp_path_factory.mktemp("seq-llama"), transformers, tokenizers,
                        layers=2, seed=0)  # fmt: skip


def test_prompts_are_first_sentences_with_the_rest_as_reference():
    docs = [Document("a", "One two. Three four. Five.\n\nA heading\n\nSix seven? Eight nine.")]
    prompts = paragraph_prompts(docs, min_chars=5)
    assert [(p.prompt, p.text) for p in prompts] == [
        ("One two.", " Three four. Five."), ("Six seven?", " Eight nine.")]  # fmt: skip
    assert [p.name for p in prompts] == ["a#0", "a#2"]


def completions_of(llama, paragraphs, out, settings, fail_after=None, monkeypatch=None):
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.models.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm(llama), HFTokenizer(llama)
    prompts = paragraph_prompts(read_documents([str(paragraphs)]))
    if fail_after is not None:
        real, calls = generations.complete, []

        def failing(*args, **kwargs):
            if len(calls) == fail_after:
                raise KeyboardInterrupt
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(generations, "complete", failing)
    said = []
    docs = generations.teacher_completions(prompts, model, tokenizer, settings, out_dir=out,
                                           teacher_sha256="x", log=said.append)  # fmt: skip
    return docs, said


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generations_resume_after_a_kill_to_what_one_pass_gives(
    tmp_path, llama, paragraphs, monkeypatch, temperature
):
    settings = SequenceLevelConfig(max_new_tokens=6, temperature=temperature, batch_size=2)
    whole, _ = completions_of(llama, paragraphs, tmp_path / "a", settings)
    assert len(whole) == 90 and all(d.prompt and isinstance(d.text, str) for d in whole)
    with pytest.raises(KeyboardInterrupt):
        completions_of(llama, paragraphs, tmp_path / "b", settings, 2, monkeypatch)
    monkeypatch.undo()
    directory = next(p for p in (tmp_path / "b" / "generations").iterdir() if p.is_dir())
    assert sorted(p.name for p in directory.iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]
    resumed, said = completions_of(llama, paragraphs, tmp_path / "b", settings)
    assert resumed == whole  # the chunks already written, then the rest from their own seeds
    again, said = completions_of(llama, paragraphs, tmp_path / "b", settings)
    assert again == whole and said[0].startswith("teacher's completions: reading")
    # a part changed on disk is named, not trusted
    part = directory / "part-00001.jsonl"
    row = json.loads(part.read_text().splitlines()[0])
    part.write_text(json.dumps({**row, "completion": "forged"}) + "\n")
    with pytest.raises(DataError, match="does not match its manifest's sha256"):
        completions_of(llama, paragraphs, tmp_path / "b", settings)


def test_a_sequence_level_run_trains_on_the_teachers_completions(tmp_path, llama, paragraphs):
    settings = [
        f"data.files=[{paragraphs}]", f"kd.teachers=[{{checkpoint: {llama}}}]",
        "kd.min_teacher_top1=0", "kd.teacher_precision=fp32", "model.arch=null", "model.args={}",
        f"model.checkpoint={llama}", "kd.sequence_level={max_new_tokens: 8, batch_size: 4}",
        "train.epochs=1",
    ]  # fmt: skip
    said = []
    record = run(lm_config(tmp_path, paragraphs, *settings), progress=False,
                 log=said.append).record  # fmt: skip
    assert any(line.startswith("sequence-level distillation: text") for line in said)
    assert any(
        line.startswith("teacher's completions: ") and " prompts, 8 new tokens" in line
        for line in said
    )
    assert record.test_tokens > 0 and record.test_perplexity > 1
    # a second run with the same teacher and settings reads them
    said = []
    run(lm_config(tmp_path, paragraphs, *settings, "kd.alpha=1.0", "kd.beta=0.0"),
        progress=False, log=said.append)  # fmt: skip
    assert any(line.startswith("teacher's completions: reading") for line in said)
    with pytest.raises(ValueError, match="kd.sequence_level trains a language model"):
        from kdistill.config import load_config

        load_config("digits/distill", values={"kd.sequence_level": {"max_new_tokens": 4}})


def test_on_policy_distillation_repeats_its_steps_and_resumes(tmp_path, llama, paragraphs):
    """GKD on the paragraphs: half the batches are the student's own samples scored by the
    teacher; the run records its generation, and an interrupted run resumes to the same
    weights (the coins and samples come from the seed, the epoch and the batch)."""
    from kdistill.experiment.loading import load_model

    from .test_engine import StopAt

    settings = [
        f"kd.teachers=[{{checkpoint: {llama}}}]", "kd.min_teacher_top1=0",
        "kd.teacher_precision=fp32", "model.arch=null", "model.args={}",
        f"model.checkpoint={llama}", "kd.token_loss=jsd",
        "kd.on_policy={lmbda: 0.5, max_new_tokens: 6}", "train.epochs=3",
    ]  # fmt: skip
    said = []
    whole = run(lm_config(tmp_path / "a", paragraphs, *settings), progress=False,
                log=said.append)  # fmt: skip
    assert any(line.startswith("on-policy distillation: ") for line in said)
    generation = whole.record.generation
    assert generation["on_policy_batches"] > 0 and generation["generated_tokens"] > 0
    assert generation["generation_tokens_per_s"] > 0
    cfg = lm_config(tmp_path / "b", paragraphs, *settings)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(2)], progress=False, log=lambda _: None)
    resumed = run(cfg, resume=True, progress=False, log=lambda _: None)
    a, b = load_model(whole.run_dir).model, load_model(resumed.run_dir).model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="no cache holds"):
        lm_config(tmp_path, paragraphs, *settings, "kd.teacher_cache.enabled=true")


def test_a_judge_scores_the_models_own_greedy_continuations(tmp_path, llama, paragraphs, capsys):
    """``kdistill eval --judge``: a model judged by itself scores each greedy token at minus the
    log of its largest probability, computed here step by step without the judge's code."""
    from kdistill.cli.main import main
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.models.causal_lm import load_causal_lm

    capsys.readouterr()
    assert main(["eval", str(llama), "--dataset", "text", "--data-root", str(paragraphs),
                 "--json", "--judge", str(llama), "--judge-prompts", "3",
                 "--judge-tokens", "4"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    model, tokenizer = load_causal_lm(llama).eval(), HFTokenizer(llama)
    from kdistill.data.text import split_documents

    test = split_documents(read_documents([paragraphs]))["test"]
    nats, tokens, distinct, bigrams = 0.0, 0, 0, 0
    for prompt in [d.prompt for d in paragraph_prompts(test)[:3]]:
        ids = tokenizer.encode(prompt)
        written = []
        for _ in range(4):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids]))[0, -1].double(), -1)
            best = int(logp.argmax())
            if best == tokenizer.eos_id:
                break
            nats -= float(logp[best])
            tokens += 1
            ids.append(best)
            written.append(best)
        pairs = [tuple(written[i : i + 2]) for i in range(len(written) - 1)]
        distinct, bigrams = distinct + len(set(pairs)), bigrams + len(pairs)
    assert out["judged_prompts"] == 3 and out["judged_tokens"] == tokens > 0
    assert out["judge_nll_per_token"] == pytest.approx(nats / tokens, rel=1e-4)
    assert out["judged_distinct_bigrams"] == (distinct / bigrams if bigrams else None)
    # a judge that reads other tokens is refused by name: the same Llama with a byte-level BPE
    import shutil

    import tokenizers
    import transformers

    other = tmp_path / "other"
    shutil.copytree(llama, other)
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=280, special_tokens=["<eos>"],
                                             show_progress=False)  # fmt: skip
    backend.train_from_iterator(["a small text to learn a few merges from"], trainer)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>"
    ).save_pretrained(other)
    args = ["eval", str(llama), "--dataset", "text", "--data-root", str(paragraphs), "--judge"]
    assert main([*args, str(other)]) == 2
    assert (
        "the judge scores the model's tokens, which needs one tokenizer" in capsys.readouterr().err
    )
    assert main([*args, str(tmp_path / "nothing")]) == 2
    assert "not smollm2, a .gguf file" in capsys.readouterr().err


COUNTER = '''
import json, os
from pathlib import Path
from kdistill.engine import Callback

class CountSamples(Callback):
    """Each process writes the on-policy batches and tokens it generated itself."""
    def on_fit_end(self, trainer):
        o = trainer.objective
        path = Path(os.environ["COUNTS"] + os.environ.get("RANK", "0"))
        path.write_text(json.dumps([o.on_policy_batches, o.generated_tokens]))
'''


def test_on_policy_on_two_processes_states_the_runs_samples(tmp_path, llama, paragraphs):
    """Data-parallel GKD (2 gloo processes): each process flips its own coins and samples its
    own share; the record counts the samples of both, not only those of the first."""
    import os
    import subprocess
    import sys

    (tmp_path / "counter.py").write_text(COUNTER)
    env = {**os.environ, "COUNTS": str(tmp_path / "counts-"),
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "kdistill", "train", "--out", str(tmp_path), "--name", "two",
         "--nproc", "2", "-q", "data.name=text", f"data.files=[{paragraphs}]", "data.block=16",
         "data.batch_size=8", "data.eval_batch_size=16", "model.arch=null", "model.args={}",
         f"model.checkpoint={llama}", f"kd.teachers=[{{checkpoint: {llama}}}]",
         "kd.min_teacher_top1=0", "kd.teacher_precision=fp32", "kd.teacher_cache.enabled=false",
         "kd.token_loss=jsd", "kd.on_policy={lmbda: 0.5, max_new_tokens: 6}", "optim.lr=0.01",
         "train.epochs=2", "train.measure_latency=false", "train.tensorboard=false",
         "train.callbacks=[counter:CountSamples]"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [json.loads((tmp_path / f"counts-{rank}").read_text()) for rank in (0, 1)]
    assert all(batches > 0 for batches, _ in counts)  # both processes sampled
    generation = json.loads((tmp_path / "two" / "summary.json").read_text())["generation"]
    assert generation["on_policy_batches"] == counts[0][0] + counts[1][0]
    assert generation["generated_tokens"] == counts[0][1] + counts[1][1]
    assert generation["generation_tokens_per_s"] > 0
