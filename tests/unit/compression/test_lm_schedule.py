"""The language-model quantization policy's pieces: which Linear layers it quantizes, what the
fake-quantized weights are (against a float64 reference of symmetric integer rounding), and the
packed size it reports."""

import pytest
import torch
from torch import nn

from kdistill.compression.lm_schedule import fake_quantize, packed_bytes, quantized_linears
from kdistill.policies import LanguageModelQuantizationPolicy as Policy

pytest.importorskip("torchao")


class TinyLM(nn.Module):
    """Two Linear layers and a bias-free head that reads the last hidden states."""

    gives_last_hidden = True

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(32, 16, bias=False)
        self.down = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)

    def forward(self, x):
        return self.head(self.down(self.up(x)))


def reference(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric rounding per group: scale = max |w| / ((qmax - qmin) / 2), in float64."""
    w = weight.detach().double().view(weight.shape[0], -1, group)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = w.abs().amax(-1, keepdim=True) / ((qmax - qmin) / 2)
    return (torch.clamp(torch.round(w / scale), qmin, qmax) * scale).view_as(weight)


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, None), (4, 8), (2, 16)])
def test_fake_quantized_weights_are_symmetric_integer_rounding(bits, group):
    torch.manual_seed(0)
    model = TinyLM()
    weight = model.up.weight.detach().clone()
    names = fake_quantize(model, Policy(weight_bits=bits, group_size=group))
    assert names == ["up", "down"]  # the head stays in full precision
    assert type(model.head) is nn.Linear
    got = model.up.weight_fake_quantizer(model.up.weight).double()
    expected = reference(weight, bits, group or 32)
    # the same values except where w / scale is exactly half a step beyond the last level
    # (the largest weight of a group: torch rounds ties to even, torchao's kernel may not)
    grouped = weight.abs().view(16, -1, group or 32)
    extreme = (grouped == grouped.amax(-1, keepdim=True)).view_as(weight)
    assert torch.allclose(got[~extreme], expected[~extreme], atol=1e-6)
    levels = got.view(16, -1, group or 32)[0, 0].unique().numel()
    assert levels <= 2**bits
    # the forward pass uses them, and gradients reach the full-precision weights
    x = torch.randn(3, 32)
    assert torch.allclose(model.up(x), x @ got.float().T, atol=1e-5)
    model(x).sum().backward()
    assert model.up.weight.grad is not None and model.up.weight.grad.abs().sum() > 0


def test_skip_chooses_the_full_precision_layers_and_names_a_miss():
    model = TinyLM()
    assert quantized_linears(model, Policy(skip=("down",))) == ["up", "head"]
    assert quantized_linears(model, Policy(skip=("re:^(up|head)$",))) == ["down"]
    with pytest.raises(ValueError, match="skip 'nothing' matches no Linear layer; layers: up"):
        quantized_linears(model, Policy(skip=("nothing",)))
    with pytest.raises(ValueError, match=r"group_size=5 does not divide .* up \(32\)"):
        fake_quantize(TinyLM(), Policy(group_size=5))


def test_a_quantized_head_is_not_used_chunk_by_chunk():
    """A chunked loss reads the head's .weight directly; a fake-quantized head rounds it in its
    forward pass, so such a student's logits come from its forward pass instead."""
    from kdistill.objectives.tokens import output_head

    model = TinyLM()
    assert output_head(model) is model.head
    fake_quantize(model, Policy(skip=()))
    assert output_head(model) is None


def test_packed_bytes_count_bits_and_scales():
    model = TinyLM()
    names = fake_quantize(model, Policy(weight_bits=4, group_size=8))
    # up: 16 x 32 weights at 4 bits + 16 rows x 4 groups of 32-bit scales; down: 16 x 16 at
    # 4 bits + 16 x 2 scales; its bias and the head at 32 bits
    bits = 16 * 32 * 4 + 16 * 4 * 32 + 16 * 16 * 4 + 16 * 2 * 32 + 16 * 32 + 10 * 16 * 32
    assert packed_bytes(model, names, Policy(weight_bits=4, group_size=8)) == bits // 8


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match="weight_bits must be in 2..8, got 1"):
        Policy(weight_bits=1)
    with pytest.raises(ValueError, match="activation_bits must be null or in 2..8"):
        Policy(activation_bits=16)
    assert Policy(weight_bits=4, group_size=32).describe() == "w4g32"
    assert Policy(activation_bits=8).describe() == "w8a8"


def test_activations_are_rounded_per_token_when_asked():
    torch.manual_seed(0)
    weights_only, both = TinyLM(), TinyLM()
    both.load_state_dict(weights_only.state_dict())
    fake_quantize(weights_only, Policy(weight_bits=8))
    fake_quantize(both, Policy(weight_bits=8, activation_bits=4))
    x = torch.randn(5, 32)
    assert both.up.activation_fake_quantizer is not None
    assert weights_only.up.activation_fake_quantizer is None
    # 4-bit inputs: each token's row of the first layer's input takes at most 16 values
    assert both.up.activation_fake_quantizer(x)[0].unique().numel() <= 16
    assert not torch.allclose(both(x), weights_only(x))
