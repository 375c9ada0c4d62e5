"""Rebuilding the structure a compressed model file was saved from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdistill.compression import pruning, quantization
from kdistill.policies import QuantizationPolicy


def apply_structure(
    model: nn.Module,
    extra: Mapping[str, Any],
    input_shape: tuple[int, ...],
    *,
    quantized: bool = True,
) -> nn.Module:
    """Apply a model file's compression record to a freshly built network: channel counts first
    (structured pruning), then, unless ``quantized=False``, the fake-quantized graph, so that
    the file's tensors load into the result. The graph's observers are off: a loaded model is
    for inference (training continues through the quantization policy instead)."""
    if "layer_shapes" in extra:
        pruning.apply_layer_shapes(model, extra["layer_shapes"])
    if quantized and "qat" in extra:
        model = quantization.prepare_qat(model, QuantizationPolicy(**extra["qat"]), input_shape)
        quantization.freeze_observers(model)
    return model
