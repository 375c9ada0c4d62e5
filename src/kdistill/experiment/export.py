"""``export_model``: a trained student as standalone files (``kdistill export``), each checked.

ONNX (FP32, or int8 from quantization-aware training or post-training quantization) and
``torch.export`` archives, with the input normalization folded in
(:mod:`kdistill.compression.deploy`). Every file written is run on the test split with raw
inputs (onnxruntime for ONNX) and compared with the PyTorch model the run saved: accuracy and
agreement of the predictions, in ``export.json`` and on the console.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.compression import quantization
from kdistill.compression.deploy import metadata, post_training_int8, write_torch_export
from kdistill.compression.export import (
    onnx_predictor,
    onnx_session,
    with_normalization,
    write_onnx,
)
from kdistill.data import loader_for
from kdistill.engine.evaluation import evaluate
from kdistill.experiment.loading import data_of_model, load_model
from kdistill.files import EXPORT_RECORD, atomic_dir, atomic_write_text, export_file, sha256_file
from kdistill.trust import NO_TRUST, CodeTrust

Log = Callable[[str], None]
FORMATS = ("onnx", "pt2")
INT8_CHOICES = ("auto", "ptq", "none")


def export_model(
    path: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    int8: str = "auto",
    calibration_samples: int = 512,
    trust: CodeTrust = NO_TRUST,
    log: Log = print,
) -> dict[str, Any]:
    """Export the model at ``path`` (model file or finished run) into ``out_dir``.

    Args:
        formats: ``onnx`` and/or ``pt2`` (``torch.export``).
        int8: ``auto``: int8 for a quantization-aware run (its converted graph), FP32 otherwise;
            ``ptq``: also int8 of an FP32 student by post-training quantization, calibrated on
            ``calibration_samples`` training samples; ``none``: FP32 only (a QAT run has no FP32
            form and is exported as int8 regardless).

    Returns:
        What ``export.json`` holds: the source, and per file its format, precision, test top-1
        and agreement with the saved PyTorch model's predictions.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"export formats must be among {', '.join(FORMATS)}, got {list(formats)}")
    if int8 not in INT8_CHOICES:
        raise ValueError(f"--int8 must be one of {', '.join(INT8_CHOICES)}, got {int8!r}")
    if calibration_samples < 1:
        raise ValueError(f"calibration samples must be >= 1, got {calibration_samples}")
    loaded = load_model(path, trust=trust)
    spec, model = loaded.spec, loaded.model
    shape = tuple(spec.input_shape)
    data = data_of_model(spec)
    cpu = torch.device("cpu")
    normalized = loader_for(data.test, 512, device=cpu, mean=spec.mean, std=spec.std)
    raw = loader_for(data.test, 512, device=cpu)  # what an exported model is fed
    reference = evaluate(model.to(cpu), normalized, data.num_classes, across_processes=False)
    log(f"{loaded.source.file}: {spec.arch}, test top-1 {reference.metrics['top1']:.2%} (PyTorch)")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the exported files")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_RECORD).is_file():
        raise ValueError(
            f"--out {out} holds files that are not a kdistill export (it has no {EXPORT_RECORD}): "
            "give a new or empty directory (an earlier export is replaced whole)"
        )
    networks: list[tuple[str, nn.Module]] = []
    if "qat" in spec.extra:
        networks.append(("int8", quantization.convert_qat(model)))
        how_int8 = "converted from quantization-aware training"
    else:
        networks.append(("fp32", model))
        how_int8 = f"post-training quantization, {calibration_samples} calibration samples"
        if int8 == "ptq":
            # the first training samples in the split's order, normalized as the network sees them
            calibration = loader_for(data.train, 128, device=cpu, mean=spec.mean, std=spec.std)
            batches = []
            seen = 0
            for batch in calibration:
                batches.append(batch.inputs[: calibration_samples - seen])
                seen += len(batches[-1])
                if seen >= calibration_samples:
                    break
            if seen < calibration_samples:
                log(
                    f"note: {calibration_samples} calibration samples asked for, the training "
                    f"split has {seen}: all of them calibrate the int8 model"
                )
            how_int8 = f"post-training quantization, {seen} calibration samples"
            networks.append(("int8", post_training_int8(model, shape, batches)))

    source = f"{loaded.source.file} (sha256 {sha256_file(loaded.source.file)[:12]})"
    files = []
    # The files are written into a new directory that then replaces ``out`` whole, so that an
    # export folder is always one model's: a failure (a full disk) leaves the old set intact.
    with atomic_dir(out) as staging:
        for precision, network in networks:
            wrapped = with_normalization(network, spec.mean, spec.std, shape).eval()
            meta = metadata(
                spec.to_json(), class_names=spec.class_names, input_shape=shape, mean=spec.mean,
                std=spec.std, source=source,
                precision=precision if precision == "fp32" else f"int8 ({how_int8})",
            )  # fmt: skip
            for fmt in formats:
                if fmt == "onnx":
                    file = write_onnx(wrapped, shape, staging / export_file(precision, fmt), meta)
                    predictor: Any = onnx_predictor(onnx_session(file))
                else:
                    file = write_torch_export(wrapped, shape, staging / export_file(precision, fmt))
                    # an exported program's module has no train/eval modes: call it as a function
                    program = torch.export.load(str(file)).module()
                    predictor = lambda x, program=program: program(x)  # noqa: E731
                check = evaluate(predictor, raw, data.num_classes, across_processes=False)
                agreement = float((check.predictions == reference.predictions).float().mean())
                entry = {
                    "file": file.name,
                    "format": fmt,
                    "precision": precision,
                    "bytes": file.stat().st_size,
                    "test_top1": check.metrics["top1"],
                    "agreement_with_pytorch": agreement,
                }
                files.append(entry)
                log(
                    f"{out / file.name}: {fmt} {precision}, test top-1 {entry['test_top1']:.2%}, same "
                    f"prediction as the PyTorch model on {agreement:.2%} of {len(data.test)} test "
                    "samples"
                )
        result = {
            "source": source,
            "arch": spec.arch,
            "dataset": data.name,
            "input": "raw samples: pixels in [0, 1] (raw features for vector data), "
            "normalization inside the model",
            "input_shape": list(shape),
            "pytorch_test_top1": reference.metrics["top1"],
            "files": files,
        }
        atomic_write_text(staging / EXPORT_RECORD, json.dumps(result, indent=2) + "\n")
    return result
