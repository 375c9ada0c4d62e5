"""The registry's GPT students: shapes, causality, tied head, sizes, arguments."""

import pytest
import torch

from kdistill.models.gpt import GPT, LANGUAGE_MODELS, build_language_model


@pytest.mark.parametrize("name", list(LANGUAGE_MODELS))
def test_every_language_model_builds_and_trains_a_step(name):
    model = build_language_model(name, 300, 32)
    ids = torch.randint(0, 300, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 300)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.head.weight is model.embed.weight  # tied
    hidden = model.hidden_states(ids)
    torch.testing.assert_close(hidden @ model.head.weight.T, logits)


def test_causal_a_later_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(50, 16, dim=32, layers=2, heads=4).eval()
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 50
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_sizes_at_smollm2s_vocabulary():
    counts = {
        name: sum(p.numel() for p in build_language_model(name, 49_152, 512).parameters())
        for name in LANGUAGE_MODELS
    }
    assert (
        2e6
        < counts["gpt_nano"]
        < counts["gpt_micro"]
        < counts["gpt_mini"]
        < counts["gpt_small"]
        < 31e6
    )


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown language model 'gpt_huge'"):
        build_language_model("gpt_huge", 10, 8)
    with pytest.raises(ValueError, match="no argument\\(s\\) width"):
        build_language_model("gpt_nano", 10, 8, {"width": 3})
    with pytest.raises(ValueError, match="dim=30 must split into 4 heads"):
        GPT(10, 8, dim=30, layers=1, heads=4)
    with pytest.raises(ValueError, match="longer than this model's context of 8"):
        GPT(10, 8, dim=8, layers=1, heads=2)(torch.zeros(1, 9, dtype=torch.long))


def test_the_registry_builds_language_models_for_token_sequences():
    from kdistill.models import build_model

    model = build_model("gpt_nano", 300, (32,), {"layers": 1})
    assert isinstance(model, GPT) and model.vocab_size == 300 and model.context == 32
    assert len(model.blocks) == 1
    with pytest.raises(ValueError, match="language model: its input is token sequences"):
        build_model("gpt_nano", 300, (1, 28, 28))
