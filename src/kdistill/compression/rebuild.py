"""Rebuilding the structure a compressed model file was saved from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdistill.compression import pruning, quantization
from kdistill.compression.lm_schedule import fake_quantize
from kdistill.compression.lora import add_adapters
from kdistill.policies import LanguageModelQuantizationPolicy, QuantizationPolicy


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
    if "lora" in extra:  # low-rank adapters: their weights are in the file too
        add_adapters(model, extra["lora"])
    if quantized and "qat" in extra:
        model = quantization.prepare_qat(model, QuantizationPolicy(**extra["qat"]), input_shape)
        quantization.freeze_observers(model)
    if quantized and "lm_qat" in extra:  # a language model's fake-quantized Linear layers
        setting = dict(extra["lm_qat"])
        if isinstance(setting.get("skip"), list):
            setting["skip"] = tuple(setting["skip"])
        try:
            policy = LanguageModelQuantizationPolicy(**setting)
        except TypeError as e:
            raise ValueError(f"the model file's lm_qat setting {setting} is not one: {e}") from None
        fake_quantize(model, policy)
    return model
