"""A GPT student started as its teacher cut down: with every layer it is the teacher (a GPT, or
a Llama with grouped key/value heads, its own rotary base and norm epsilon); with fewer it has
the teacher's evenly spaced layers; what cannot be copied is refused with the reason."""

import pytest
import torch

from kdistill.models.causal_lm import CausalLM
from kdistill.models.from_teacher import copy_teacher_into, kept_layers, student_args
from kdistill.models.gpt import GPT, build_language_model

V, L = 50, 16


def grown(teacher, **args):
    built = student_args(teacher, args)
    student = build_language_model("gpt_nano", V, L, built)
    return student, copy_teacher_into(student, teacher), built


def test_kept_layers_are_evenly_spaced_from_the_first():
    assert kept_layers(30, 15) == list(range(0, 30, 2))
    assert kept_layers(4, 2) == [0, 2] and kept_layers(4, 4) == [0, 1, 2, 3]
    assert kept_layers(30, 4) == [0, 7, 15, 22] and kept_layers(5, 1) == [0]
    with pytest.raises(ValueError, match=r"1 to 4 layers \(the teacher's\), got layers=5"):
        kept_layers(4, 5)


def test_a_gpt_teacher_cut_down():
    torch.manual_seed(0)
    teacher = GPT(V, L, dim=32, layers=4, heads=4, rope_base=500.0, norm_eps=1e-6).eval()
    ids = torch.randint(0, V, (2, L))
    whole, kept, args = grown(teacher, layers=4)
    assert kept == [0, 1, 2, 3]
    assert args == {"dim": 32, "heads": 4, "hidden": teacher.blocks[0].mlp.gate.out_features,
                    "rope_base": 500.0, "norm_eps": 1e-6, "tie_embeddings": True, "layers": 4}  # fmt: skip
    torch.testing.assert_close(whole.eval()(ids), teacher(ids))
    half, kept, args = grown(teacher)  # default: half the depth
    assert kept == [0, 2] and args["layers"] == 2
    for block, i in zip(half.blocks, kept, strict=True):
        for a, b in zip(block.parameters(), teacher.blocks[i].parameters(), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(half.embed.weight, teacher.embed.weight)
    assert half.head.weight is half.embed.weight  # still tied, as the teacher's
    with pytest.raises(ValueError, match=r"model.args dim: .* takes the teacher's widths"):
        student_args(teacher, {"dim": 64, "layers": 2})
    with pytest.raises(ValueError, match=r"got layers=9"):
        student_args(teacher, {"layers": 9})


def test_the_teacher_layers_a_student_starts_from_may_be_chosen():
    torch.manual_seed(0)
    teacher = GPT(V, L, dim=32, layers=4, heads=4).eval()
    args = student_args(teacher, {}, [0, 3])  # the first and the last
    assert args["layers"] == 2
    student = build_language_model("gpt_nano", V, L, args)
    assert copy_teacher_into(student, teacher, [0, 3]) == [0, 3]
    for block, i in zip(student.blocks, [0, 3], strict=True):
        for a, b in zip(block.parameters(), teacher.blocks[i].parameters(), strict=True):
            assert torch.equal(a, b)
    for bad in ([3, 0], [1, 1], [0, 4], []):
        with pytest.raises(ValueError, match=r"distinct layers of the teacher in increasing order"):
            student_args(teacher, {}, bad)
    with pytest.raises(ValueError, match=r"model.args.layers=3 but model.teacher_layers names 2"):
        student_args(teacher, {"layers": 3}, [0, 3])


def test_a_llama_teacher_with_grouped_key_value_heads():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=L,
        rope_theta=2000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).eval()
    teacher = CausalLM(llama, "tiny-llama")
    whole, kept, args = grown(teacher, layers=3)
    assert args["rope_base"] == 2000.0 and args["norm_eps"] == 1e-6
    assert args["tie_embeddings"] is False and whole.head.weight is not whole.embed.weight
    ids = torch.randint(0, V, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(whole.eval()(ids), teacher(ids), rtol=1e-4, atol=1e-5)
    _, kept, _ = grown(teacher, layers=2)
    assert kept == [0, 1]
    one, kept, _ = grown(teacher)
    assert kept == [0, 1] and len(one.blocks) == 2  # half of 3, rounded up

    biased = transformers.LlamaConfig(**{**config.to_dict(), "attention_bias": True})
    with pytest.raises(ValueError, match="cannot be copied into a GPT: biases"):
        student_args(CausalLM(transformers.LlamaForCausalLM(biased), "b"), {})


def test_a_teacher_of_another_architecture_is_refused():
    class Other(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="copies a kdistill GPT or a Llama.*this teacher is Other"):
        student_args(Other(), {})
