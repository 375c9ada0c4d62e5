"""The export step: a trained student as a standalone ONNX model, run with onnxruntime.

The run calls it after training (the int8 model of a quantization-aware run); nothing here is a
training callback, so exactly one process of a data-parallel run exports.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.compression.quantization import convert_qat
from kdistill.extras import require
from kdistill.files import atomic_path


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (or per feature): a trained student's preprocessing, as
    a layer."""

    def __init__(self, mean: Iterable[float], std: Iterable[float], input_shape: tuple[int, ...]):
        super().__init__()
        shape = (1, -1, *([1] * (len(input_shape) - 1)))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def with_normalization(
    model: nn.Module,
    mean: Iterable[float] | None,
    std: Iterable[float] | None,
    input_shape: tuple[int, ...],
) -> nn.Module:
    """``model`` preceded by its input normalization (``model`` itself when it had none)."""
    if mean is None or std is None:
        return model
    return nn.Sequential(Normalize(mean, std, input_shape), model)


def write_onnx(
    graph: nn.Module, input_shape: tuple[int, ...], path: str | Path, metadata: Mapping[str, str]
) -> Path:
    """Export ``graph`` (batch dimension dynamic) as one ONNX file with ``metadata``, atomically."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")  # torch.onnx's exporter

    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.randn(2, *input_shape),),
            str(tmp),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            external_data=False,
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session (graph optimizations fuse Q/DQ pairs into int8 kernels)."""
    ort = require("onnxruntime", "onnx")

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``inputs -> logits`` through an onnxruntime session."""
    name = session.get_inputs()[0].name

    def run(inputs: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: inputs.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    return run


def onnx_latency_ms(session: Any, input_shape: tuple[int, ...], batch: int, reps: int = 5) -> float:
    """Median wall time (ms) of one onnxruntime call on a batch, after one warm-up call."""
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def export_int8(
    student: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    metadata: Mapping[str, str],
    evaluate: Callable[[Any], dict[str, float]],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Convert a trained QAT student to int8, write it as ONNX with its input normalization
    (``mean``, ``std``) folded in, so that the file takes raw samples, and measure it beside
    the fake-quantized model with ``evaluate`` (``predictor -> metrics`` on normalized
    batches: the ONNX model gets them back in raw form)."""
    path = Path(path)
    fake = evaluate(student)
    started = time.perf_counter()
    int8 = with_normalization(convert_qat(student), mean, std, input_shape)
    write_onnx(int8, input_shape, path, metadata)
    session = onnx_session(path, threads=torch.get_num_threads())
    onnx = onnx_predictor(session)
    if mean is not None and std is not None:
        norm = Normalize(mean, std, input_shape)
        converted = evaluate(lambda x: onnx(x * norm.std + norm.mean))
    else:
        converted = evaluate(onnx)
    return {
        "onnx_path": str(path),
        "onnx_bytes": path.stat().st_size,
        "convert_s": time.perf_counter() - started,
        "fake_quant_test_top1": fake["top1"],
        "int8_test_top1": converted["top1"],
        "int8_cpu_latency_ms": {
            f"batch_{b}": onnx_latency_ms(session, input_shape, b) for b in (1, 128)
        },
    }
