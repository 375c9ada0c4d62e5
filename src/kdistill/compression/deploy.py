"""Standalone models from a trained student: ONNX (FP32 or int8) and ``torch.export`` archives
whose inputs are raw samples, normalization folded into the graph.

A kdistill student sees inputs standardized with its training split's mean and std; an
exported model includes that step (:class:`Normalize` before the network), so it takes what the
data files hold, scaled as kdistill reads them: pixels in [0, 1] (or a dataset's raw features),
``(N, C, H, W)`` or ``(N, F)`` float32. The metadata records it (``input: raw``), with the
classes, input shape, normalization, kdistill version and source file.

int8 comes from quantization-aware training (the run's own fake-quantized graph, converted) or
from post-training quantization of an FP32 student: the same PT2E flow at 8 bits, its
observers calibrated on training samples instead of trained.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from kdistill.compression import quantization
from kdistill.files import atomic_path
from kdistill.policies import QuantizationPolicy

RAW_INPUT = "raw"
"""The ``input`` metadata of a model that takes raw samples (normalization inside)."""


def post_training_int8(
    model: nn.Module, input_shape: tuple[int, ...], calibration: Iterable[Tensor]
) -> torch.fx.GraphModule:
    """int8 graph of an FP32 network by post-training quantization (8-bit weights per channel,
    8-bit activations): the PT2E graph with its observers run over ``calibration`` batches
    (inputs as the network sees them, normalized), then converted."""
    policy = QuantizationPolicy(weight_bits=8, activation_bits=8)
    prepared = quantization.prepare_qat(model.eval(), policy, input_shape)
    prepared.eval()
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    quantization.freeze_observers(prepared)
    return quantization.convert_qat(prepared)


def metadata(
    spec_json: str,
    *,
    class_names: Iterable[str],
    input_shape: tuple[int, ...],
    mean: Iterable[float] | None,
    std: Iterable[float] | None,
    source: str,
    precision: str,
) -> dict[str, str]:
    """What an exported model says about itself (ONNX ``metadata_props``)."""
    from kdistill._version import __version__

    return {
        "kdistill": spec_json,
        "kdistill_version": __version__,
        "input": RAW_INPUT,
        "input_shape": json.dumps(list(input_shape)),
        "input_scale": "pixels in [0, 1] (the dataset's raw features for vector data), float32",
        "normalization": json.dumps(
            {"mean": list(mean) if mean else None, "std": list(std) if std else None}
        ),
        "classes": json.dumps(list(class_names)),
        "precision": precision,
        "source": source,
    }


def write_torch_export(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """``torch.export`` archive (``.pt2``, batch dimension dynamic), written atomically; load it
    with ``torch.export.load(path).module()``."""
    example = (torch.rand(2, *input_shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            model, example, dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
        )
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer
    torch.export.save(program, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path
