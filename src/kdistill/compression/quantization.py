"""Quantization-aware training with torchao's PT2E flow, and conversion to an int8 ONNX model.

One path for every student (convolutional or MLP): the model is exported with
``torch.export``, fake quantization is inserted by torchao's ``prepare_qat_pt2e`` with an
``X86InductorQuantizer`` carrying our bit widths (BatchNorm folding into the preceding conv is
simulated), it trains like any module, and at the end ``convert_pt2e`` produces a graph of
quantize/dequantize ops with int8 weights (sub-8-bit weights are int8 containers holding only
the low-bit values) that ``torch.onnx`` exports and onnxruntime runs with int8 kernels.
torchao's eager ``QATConfig`` (Linear layers only) is not used: it cannot quantize convolutions
and has no fast CPU path for sub-8-bit weights (``shared/research/compression-stack.md``).

Costs and limits (measured there): a QAT step is about 1.8x an FP32 step on CPU; the prepared
model is a graph, so forward hooks on its submodules do not run. Activations of fewer than 8
bits are held in 8-bit containers by ONNX, so the conversion clamps them to their range first.
The accuracy after conversion is measured and reported beside the fake-quantized one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdistill.compression.selection import PRUNABLE, matches
from kdistill.extras import require
from kdistill.validation import QUANT_SETTINGS


def layer_settings(model: nn.Module, policy: Any) -> dict[str, dict[str, Any] | None]:
    """Each Conv2d/Linear layer's quantization settings (``None``: stays FP32) after overrides.

    Overrides apply in the order given; a later match wins for the keys it sets.
    """
    base = {k: getattr(policy, k) for k in QUANT_SETTINGS}
    layers: dict[str, dict[str, Any] | None] = {}
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    for pattern in policy.overrides:
        if not any(matches(n, pattern) for n in names):
            raise ValueError(
                f"quantization policy: override {pattern!r} matches no Conv2d/Linear layer; "
                f"layers: {', '.join(names)}"
            )
    for name in names:
        settings: dict[str, Any] | None = dict(base)
        for pattern, value in policy.overrides.items():
            if matches(name, pattern):
                settings = None if value is None else {**(settings or base), **value}
        layers[name] = settings
    return layers


def _quantization_config(settings: Mapping[str, Any]):
    from torchao.quantization.pt2e import (
        FakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    wb, ab = settings["weight_bits"], settings["activation_bits"]
    per_channel = settings["weight_per_channel"]
    if settings["weight_symmetric"]:
        w_scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    else:
        w_scheme = torch.per_channel_affine if per_channel else torch.per_tensor_affine
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-(2 ** (wb - 1)),
        quant_max=2 ** (wb - 1) - 1,
        qscheme=w_scheme,
        ch_axis=0 if per_channel else None,
        # Weights: the range of the current weights. Plain FakeQuantize, not the fused kernel:
        # the fused kernel computes symmetric scales as max(|min| / -qmin, max / qmax) while
        # the observer that convert_pt2e asks computes max(|min|, max) / ((qmax - qmin) / 2),
        # so below 8 bits the converted model used other scales than training did (2-bit
        # weights lost 18 points of accuracy in conversion, 4-bit 0.3).
        observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=PerChannelMinMaxObserver if per_channel else MinMaxObserver, eps=2**-12
        ),
    )
    # Activations: a moving average of the batches' ranges, same plain FakeQuantize.
    act_observer = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=2**-12)
    if settings["activation_symmetric"]:
        act = QuantizationSpec(
            dtype=torch.int8, quant_min=-(2 ** (ab - 1)), quant_max=2 ** (ab - 1) - 1,
            qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=act_observer,
        )  # fmt: skip
    else:
        act = QuantizationSpec(
            dtype=torch.uint8, quant_min=0, quant_max=2**ab - 1,
            qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=act_observer,
        )  # fmt: skip
    base = get_default_x86_inductor_quantization_config(is_qat=True)
    return dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)


def _quantizer(layers: Mapping[str, Mapping[str, Any] | None]):
    """torchao's x86 quantizer, annotating each Conv2d/Linear layer with its own settings."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    # Layers with equal settings share one annotation pass (and one configuration object).
    groups: dict[tuple | None, list[str]] = {}
    for name, settings in layers.items():
        key = None if settings is None else tuple(sorted(settings.items()))
        groups.setdefault(key, []).append(name)
    passes = [
        (None if key is None else _quantization_config(dict(key)), names)
        for key, names in groups.items()
    ]

    def from_one_layer(names: list[str]):
        # torchao's rule for set_module_name_qconfig, for a set of layers: a pattern is
        # annotated when all its nodes come from one of them.
        filters = [get_module_name_filter(name) for name in names]
        return lambda nodes: any(all(f(n) for n in nodes) for f in filters)

    class _LayerQuantizer(X86InductorQuantizer):
        """Annotates the layers in one pass per distinct setting, instead of torchao's pass
        per module name (``set_module_name_qconfig``): each pass searches the graph for every
        fusion pattern, so per-name passes made a ResNet-56's preparation take 8 minutes.

        What is quantized is what ``set_module_name_qconfig`` per layer gives: each layer's
        weights and input activations (the placement Distiller's QAT uses). Patterns that span
        several modules (conv-BN-ReLU, conv-BN-add-ReLU, linear-ReLU) never come from one layer
        alone, so their searches are skipped: each is a product over all partitions of its
        kinds (O(n^4) in the network's depth for conv-BN-add-ReLU) and could never match.
        BatchNorm folding is simulated all the same: ``prepare_qat_pt2e`` fuses every conv-BN
        pair whose conv it quantizes.
        """

        def annotate(self, model):
            for config, names in passes:
                self._annotate_with_config(model, config, from_one_layer(names))
            self._annotate_output_for_int8_in_int8_out_pattern_entry(model)
            # torchao 0.18 leaves empty annotations on a conv+BN whose conv is excluded, which
            # makes prepare_qat_pt2e fail with an IndexError (compression-stack.md, pitfall 1).
            for node in model.graph.nodes:
                a = node.meta.get("quantization_annotation")
                if a is not None and not a.input_qspec_map and a.output_qspec is None:
                    del node.meta["quantization_annotation"]
            return model

        # Patterns of several modules: never from one layer alone (see above), and their
        # searches are products over all partitions of their kinds.
        def _annotate_qat_conv2d_fusion_pattern(self, *args, **kwargs):
            pass  # conv-BN(-add)(-ReLU): BatchNorm is a module of its own

        def _annotate_conv2d_binary_unary(self, *args, **kwargs):
            pass

        def _annotate_conv2d_binary(self, *args, **kwargs):
            pass

        def _annotate_conv2d_unary(self, *args, **kwargs):
            pass

        def _annotate_linear_binary_unary(self, *args, **kwargs):
            pass

        def _annotate_linear_unary(self, *args, **kwargs):
            pass

    return _LayerQuantizer()


def prepare_qat(model: nn.Module, policy: Any, input_shape: tuple[int, ...]) -> nn.Module:
    """A fake-quantized, trainable copy of ``model`` (an exported graph module).

    The batch dimension stays dynamic. The returned module supports ``.train()`` / ``.eval()``.
    """
    require("torchao", "quant")
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    layers = layer_settings(model, policy)
    device = next(model.parameters()).device
    example = torch.randn(2, *input_shape, device=device)
    was_training = model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's notes on dynamic shapes and deprecations
        exported = torch.export.export(
            model.train(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
        ).module()
        separate_call_sites(exported)
        _check_foldable(exported)
        prepared = prepare_qat_pt2e(exported, _quantizer(layers))
    allow_exported_model_train_eval(prepared)
    prepared.train(was_training)
    return prepared


def separate_call_sites(graph_module: torch.fx.GraphModule) -> int:
    """Give each call of a module that runs more than once a partition of its own.

    torch's source partitioner (which torchao's quantizers use to find patterns such as
    conv-BN-add-ReLU) groups the nodes of an exported graph by the module they came from. A
    module called twice, such as the one ``nn.ReLU`` that torchvision's and kdistill's residual
    blocks apply both after the first convolution and after the residual addition, then forms
    one partition with two outputs, and torchao stops with "Input partition has more than one
    output node": QAT of every residual network failed this way. Each call beyond the first is
    recognised as a separate connected group of the module's nodes and gets an innermost
    ``nn_module_stack`` entry of its own (``<name>@call<i>``), after the real one, so that
    ``set_module_name_qconfig`` still finds the module by its name. Returns the number of calls
    separated.
    """
    groups: dict[str, list[torch.fx.Node]] = {}
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            groups.setdefault(list(stack.values())[-1][0], []).append(node)
    separated = 0
    for fqn, nodes in groups.items():
        calls = _connected_groups(nodes)
        for i, call in enumerate(calls[1:], start=1):
            for node in call:
                stack = dict(node.meta["nn_module_stack"])
                key, (_, cls) = list(stack.items())[-1]
                stack[f"{key}@call{i}"] = (f"{fqn}@call{i}", cls)
                node.meta["nn_module_stack"] = stack
            separated += 1
    return separated


def _check_foldable(graph_module: torch.fx.GraphModule) -> None:
    """Refuse BatchNorm layers with a weight of exactly 0 after a convolution.

    QAT simulates folding BatchNorm into the convolution before it: the convolution runs with
    its weights scaled by ``gamma / sigma`` and its output is divided by the same factor, which
    is 0/0 for a channel whose ``gamma`` is 0. timm's ResNets start so (``zero_init_last``: the
    last BatchNorm of each block at 0), and the first forward pass filled every observer with
    NaN ("min nan should be less than max nan").
    """
    zero = []
    conv = torch.ops.aten.conv2d.default
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        source, weight = node.args[0], node.args[1]
        if not (isinstance(source, torch.fx.Node) and source.target == conv):
            continue
        if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
            value = graph_module.get_parameter(weight.target)
            if bool((value == 0).any()):
                zero.append(weight.target.rsplit(".", 1)[0])
    if zero:
        names = ", ".join(zero[:4]) + (f" and {len(zero) - 4} more" if len(zero) > 4 else "")
        raise ValueError(
            f"quantization-aware training: BatchNorm weights of exactly 0 in {names} cannot be "
            "folded into the convolution before them (QAT divides by them). A network "
            "initialised so (timm's ResNets: model.args.zero_init_last=false turns it off) can "
            "start QAT after an FP32 epoch (the policy's starting_epoch: 1) or from a trained "
            "model.checkpoint"
        )


def _connected_groups(nodes: list[torch.fx.Node]) -> list[list[torch.fx.Node]]:
    """``nodes`` split into groups joined by data flow among themselves, in graph order."""
    members = set(nodes)
    parent = {node: node for node in nodes}

    def root(node: torch.fx.Node) -> torch.fx.Node:
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in nodes:
        for arg in node.all_input_nodes:
            if arg in members:
                parent[root(arg)] = root(node)
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in nodes:
        groups.setdefault(root(node), []).append(node)
    return list(groups.values())


def is_prepared(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule)


def freeze_observers(model: nn.Module) -> None:
    """Stop the fake quantizers' observers: scales and zero points stay as they are. Needed for
    evaluation too: observers also update in eval mode, so evaluating would change the model."""
    from torchao.quantization.pt2e import disable_observer

    model.apply(disable_observer)


def unfreeze_observers(model: nn.Module) -> None:
    from torchao.quantization.pt2e import enable_observer

    model.apply(enable_observer)


def convert_qat(model: nn.Module) -> torch.fx.GraphModule:
    """The int8 graph of a trained QAT model (a copy on the CPU; ``model`` is unchanged):
    quantize/dequantize ops with int8 weights, sub-8-bit activations clamped to their range."""
    import copy

    require("torchao", "quant")
    from torchao.quantization.pt2e import (
        allow_exported_model_train_eval,
        move_exported_model_to_eval,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = copy.deepcopy(model).to("cpu")
    move_exported_model_to_eval(prepared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = _clamp_narrow_activations(convert_pt2e(prepared))
    allow_exported_model_train_eval(converted)  # so that .eval() of a wrapper reaches it safely
    return converted


_FULL_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def _clamp_narrow_activations(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Clamp activations quantized to fewer than 8 bits to their range before quantizing.

    ONNX's QuantizeLinear saturates at the limits of its 8-bit type only, so a 4-bit activation
    would keep values up to 255 steps instead of 15. A clamp to ``[(qmin - zp) * scale,
    (qmax - zp) * scale]`` in front of each such quantize makes the exported model compute what
    training simulated. (Weights need nothing: they are stored already quantized.)
    """
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != quantize:
            continue
        x, scale, zero_point, qmin, qmax, dtype = node.args
        if (qmin, qmax) == _FULL_RANGE.get(dtype):
            continue
        with graph.inserting_before(node):
            clamped = graph.call_function(
                torch.ops.aten.clamp.default,
                (x, (qmin - zero_point) * scale, (qmax - zero_point) * scale),
            )
        node.replace_input_with(x, clamped)
    graph.lint()
    graph_module.recompile()
    return graph_module


def packed_size_bytes(model: nn.Module, layers: Mapping[str, Mapping[str, Any] | None]) -> int:
    """Bytes of the weights if each quantized layer's weights were packed at its bit width
    (FP32 layers, biases and everything else at 32 bits): the size a low-bit format would have."""
    total = 0
    params = dict(model.named_parameters())
    for name, p in params.items():
        layer = name.rsplit(".", 1)[0]
        settings = layers.get(layer)
        bits = settings["weight_bits"] if settings is not None and name.endswith("weight") else 32
        total += p.numel() * bits
    return total // 8
