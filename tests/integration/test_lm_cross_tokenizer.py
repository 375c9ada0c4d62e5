"""A student with its own small vocabulary (``data.tokenizer: bpe:<N>``, trained on the run's
text) distilled from a teacher with another tokenizer (``kd.cross_tokenizer``), end to end on
a corpus and a tiny Llama the tests make."""

import json
import math

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import ConfigError
from kdistill.data.errors import DataError
from kdistill.experiment import run
from kdistill.experiment.loading import load_model

from .test_language_models import QUIET, lm_config

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory, corpus):
    """A tiny Llama whose own tokenizer is a byte-level BPE of 300 tokens (not the student's)."""
    path = tmp_path_factory.mktemp("bpe-llama")
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = byte_level(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=byte_level.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator([p.read_text() for p in sorted(corpus.glob("*.txt"))], trainer)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>"
    ).save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=48,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def cross_config(out, corpus, teacher, *overrides):
    return lm_config(
        out, corpus, "data.tokenizer=bpe:270", f"kd.teachers=[{{checkpoint: {teacher}}}]",
        "kd.teacher_cache.enabled=false", "kd.min_teacher_top1=0", "kd.teacher_precision=fp32",
        "kd.cross_tokenizer=spans", "train.epochs=1", *overrides,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["spans", "uld"])
def test_a_student_with_its_own_vocabulary_distils_from_a_teacher_with_another(
    tmp_path, corpus, bpe_llama, capsys, method
):
    lines = []
    cfg = cross_config(tmp_path, corpus, bpe_llama, f"kd.cross_tokenizer={method}")
    result = run(cfg, progress=False, log=lines.append)
    record = result.record
    assert math.isfinite(record.test_perplexity) and 0 < record.test_bits_per_byte < 8
    # the teacher measured on its own tokens: its bits per byte, and no agreement (other tokens)
    assert 0 < record.teacher_test_bits_per_byte < 16 and record.teacher_test_perplexity > 1
    assert any("cross-tokenizer distillation at byte-aligned positions" in line for line in lines)
    assert any("teacher on its own tokens of the test text" in line for line in lines)
    assert any(line.startswith("cross-tokenizer: ") and "of the student's positions" in line
               for line in lines)  # fmt: skip
    # the alignment the log states is kept in the record
    aligned = record.alignment
    assert aligned is not None and 0 < aligned["aligned_share"] <= 1
    assert aligned["teacher_tokens_per_student_token"] > 0 and aligned["blocks"] >= 1
    assert any(f"{aligned['aligned_share']:.1%} of the student's positions" in line
               for line in lines)  # fmt: skip
    history = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    assert "agreement" not in history[-1]["test"]
    assert history[-1]["train"]["loss_distill"] > 0
    # the student's tokenizer is the trained BPE, saved under the output directory
    saved = sorted((tmp_path / "tokenizers").glob("bpe-*"))
    assert len(saved) == 1 and saved[0].name.startswith("bpe-270-")
    model = load_model(result.run_dir)
    assert model.spec.num_classes == 270 and model.spec.extra["tokenizer_source"] == str(saved[0])
    capsys.readouterr()
    assert main(["eval", str(result.run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(record.test_perplexity, rel=1e-5)


def test_the_trained_tokenizer_is_reused_and_checked(tmp_path, corpus):
    from kdistill.data.bpe import MANIFEST, trained_bpe
    from kdistill.data.text import read_documents

    docs = read_documents([corpus])
    first = trained_bpe(docs, 280, tmp_path)
    again = trained_bpe(docs, 280, tmp_path)
    assert again.identity == first.identity and again.source == first.source
    other = trained_bpe(docs[:-1], 280, tmp_path)  # other text, another tokenizer directory
    assert other.source != first.source
    manifest = tmp_path / first.source.split("/")[-1] / MANIFEST
    manifest.write_text(manifest.read_text().replace('"vocab_size": 280', '"vocab_size": 281'))
    with pytest.raises(DataError, match="does not hold the tokenizer its name promises"):
        trained_bpe(docs, 280, tmp_path)


def test_what_cross_tokenizer_distillation_refuses_is_named(tmp_path, corpus, bpe_llama):
    with pytest.raises(ConfigError, match="set kd.teacher_cache.enabled=false"):
        cross_config(tmp_path, corpus, bpe_llama, "kd.teacher_cache.enabled=true")
    with pytest.raises(ConfigError, match="bpe:<vocab> trains"):
        cross_config(tmp_path, corpus, bpe_llama, "data.tokenizer=bpe:12")
    # without kd.cross_tokenizer the two tokenizers are refused, naming both
    plain = cross_config(tmp_path, corpus, bpe_llama, "kd.cross_tokenizer=null")
    with pytest.raises(DataError, match="use different tokenizers"):
        run(plain, **QUIET)
    # a teacher that shares the student's tokenizer needs no cross-tokenizer distillation
    shared = cross_config(tmp_path, corpus, bpe_llama, f"data.tokenizer={bpe_llama}")
    with pytest.raises(DataError, match="drop kd.cross_tokenizer"):
        run(shared, **QUIET)
