"""The teacher's completions from a kdistill GPT (no key/value cache): greedy is the argmax at
every step, sampling is reproducible from its seed and stays in the top-p nucleus."""

import torch

from kdistill.config.schema import SequenceLevelConfig
from kdistill.data.tokenizers import ByteTokenizer
from kdistill.models.generation import complete, next_token
from kdistill.models.gpt import build_language_model


def test_greedy_completion_is_the_argmax_chain():
    torch.manual_seed(0)
    model, tokenizer = build_language_model("gpt_nano", 257, 64, {}), ByteTokenizer()
    settings = SequenceLevelConfig(max_new_tokens=5)
    [text] = complete(model, tokenizer, ["ab"], settings, seed=0)
    ids = tokenizer.encode("ab")
    with torch.no_grad():
        for _ in range(5):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            if nxt == tokenizer.eos_id:
                break
            ids.append(nxt)
    assert text == tokenizer.decode(ids[2:])
    assert model.training  # its mode is given back


def test_sampling_is_reproducible_and_keeps_to_the_nucleus():
    torch.manual_seed(0)
    model, tokenizer = build_language_model("gpt_nano", 257, 64, {}), ByteTokenizer()
    settings = SequenceLevelConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = complete(model, tokenizer, ["x", "y"], settings, seed=3)
    assert a == complete(model, tokenizer, ["x", "y"], settings, seed=3)
    logits = torch.tensor([3.0, 2.0, 0.0, -5.0])  # probabilities 0.70, 0.26, 0.03, 0.0002
    nucleus = SequenceLevelConfig(temperature=1.0, top_p=0.9)
    g = torch.Generator().manual_seed(0)
    drawn = {next_token(logits, nucleus, g) for _ in range(200)}
    assert drawn == {0, 1}  # 0.70 + 0.26 covers 0.9: the rest is never drawn
