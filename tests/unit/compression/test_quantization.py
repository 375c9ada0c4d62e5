"""Quantization settings per layer, and the PT2E prepare -> train -> convert -> ONNX path."""

import onnx
import pytest
import torch
from onnx import numpy_helper

from kdistill.compression.export import onnx_predictor, onnx_session, write_onnx
from kdistill.compression.quantization import (
    convert_qat,
    freeze_observers,
    layer_settings,
    packed_size_bytes,
    prepare_qat,
)
from kdistill.config import ConfigError
from kdistill.models import build_model
from kdistill.policies import QuantizationPolicy


def test_overrides_by_name_and_pattern():
    model = build_model("lenet5", 10, (1, 28, 28))
    policy = QuantizationPolicy(
        weight_bits=4, overrides={"features.0": None, "re:classifier\\.[13]": {"weight_bits": 2}}
    )
    layers = layer_settings(model, policy)
    assert layers["features.0"] is None
    assert layers["features.3"]["weight_bits"] == 4
    assert layers["classifier.1"]["weight_bits"] == 2 and layers["classifier.3"]["weight_bits"] == 2
    assert (
        layers["classifier.5"]["weight_bits"] == 4
        and layers["classifier.5"]["activation_bits"] == 8
    )
    with pytest.raises(ValueError, match="matches no Conv2d/Linear layer; layers: features.0"):
        layer_settings(model, QuantizationPolicy(overrides={"features.9": None}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_bits": 1}, "weight_bits must be in 2..8"),
        ({"activation_bits": 9}, "activation_bits must be in 2..8"),
        ({"overrides": {"x": 4}}, "must be null"),
        ({"overrides": {"x": {"bits": 4}}}, "unknown key"),
        ({"freeze_epoch": 0}, "freeze_epoch"),
    ],
)
def test_bad_policies(kwargs, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        QuantizationPolicy(**kwargs)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("lenet5", {"weight_bits": 4, "activation_bits": 8}),
        ("lenet5", {"weight_bits": 2, "activation_bits": 8}),
        ("lenet5", {"weight_bits": 4, "activation_bits": 4}),
        (
            "mlp",
            {
                "weight_bits": 3,
                "activation_bits": 6,
                "weight_per_channel": False,
                "activation_symmetric": True,
            },
        ),
    ],
)
def test_prepare_train_convert_export(tmp_path, arch, kwargs):
    torch.manual_seed(0)
    shape = (1, 12, 12)
    model = build_model(arch, 5, shape, {"hidden": [16]} if arch == "mlp" else {})
    names = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    policy = QuantizationPolicy(overrides={names[0]: None}, **kwargs)
    prepared = prepare_qat(model, policy, shape)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    x, y = torch.randn(32, *shape), torch.randint(0, 5, (32,))
    prepared.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(prepared(x), y).backward()
        opt.step()
    freeze_observers(prepared)  # as the trainer does at the end: the ranges are final
    prepared.eval()
    fake = prepared(x).detach()
    path = write_onnx(convert_qat(prepared), shape, tmp_path / "m.onnx", {"kdistill": "{}"})
    proto = onnx.load(path)
    assert {p.key for p in proto.metadata_props} == {"kdistill"}
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # weights of quantized layers are stored as integers within the low-bit range
    bits = kwargs["weight_bits"]
    int_weights = [
        numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(t).size > 16
    ]
    assert int_weights
    for w in int_weights:
        assert w.min() >= -(2 ** (bits - 1)) and w.max() <= 2 ** (bits - 1) - 1
    out = onnx_predictor(onnx_session(path))(x)
    assert out.shape == fake.shape
    # The int8 model computes what training simulated: the same scales, so the same classes
    # and logits up to the rounding of int8 kernels (a mismatch of scales once cost 2-bit
    # students 18 points in conversion).
    # (int8 kernels may round a near-tie the other way on another CPU: allow one sample in 32)
    assert (out.argmax(1) == fake.argmax(1)).float().mean() >= 31 / 32
    assert (out - fake).abs().max() < 0.05 * fake.abs().max()
    assert (
        packed_size_bytes(model, layer_settings(model, policy))
        < sum(p.numel() for p in model.parameters()) * 4
    )


def test_a_qat_model_file_round_trips_every_buffer(tmp_path):
    """safetensors drops state_dict version metadata; torchao observers then reset eps unless
    load_weights supplies it (found by the resume test)."""
    from kdistill.models import ModelSpec, load_weights, save_model_file

    policy = QuantizationPolicy(weight_bits=4)
    prepared = prepare_qat(build_model("lenet5", 10, (1, 8, 8)), policy, (1, 8, 8))
    prepared(torch.randn(8, 1, 8, 8))  # observers see data
    save_model_file(
        tmp_path / "m.safetensors", prepared.state_dict(), ModelSpec("lenet5", {}, 10, (1, 8, 8))
    )
    fresh = prepare_qat(build_model("lenet5", 10, (1, 8, 8)), policy, (1, 8, 8))
    load_weights(fresh, tmp_path / "m.safetensors")
    for key, value in prepared.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_batchnorm_weights_of_zero_are_refused_with_the_way_out():
    """QAT folds BatchNorm into the convolution before it by dividing by its weight: a weight
    of 0 (timm's zero_init_last) filled every observer with NaN."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )
    with torch.no_grad():
        model[1].weight[2] = 0.0
    with pytest.raises(ValueError, match=r"exactly 0 in 1 cannot be folded.*starting_epoch: 1"):
        prepare_qat(model, QuantizationPolicy(weight_bits=4), (1, 8, 8))
    with torch.no_grad():
        model[1].weight[2] = 0.5
    prepare_qat(model, QuantizationPolicy(weight_bits=4), (1, 8, 8))(torch.randn(4, 1, 8, 8))
