"""``kdistill export``: standalone ONNX / torch.export files that take raw samples and predict
what the saved model predicts."""

import json

import numpy as np
import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import DataConfig
from kdistill.data import build_data
from kdistill.experiment import load_model, run

from .conftest import digits_config
from .test_engine import QUIET


def raw_and_normalized(spec):
    data = build_data(DataConfig(name="digits"))
    raw = (
        data.test.images.float() / 255
        if data.test.images.dtype == torch.uint8
        else data.test.images.float()
    )
    mean = torch.tensor(spec.mean).view(1, -1, *([1] * (raw.dim() - 2)))
    std = torch.tensor(spec.std).view(1, -1, *([1] * (raw.dim() - 2)))
    return raw, (raw - mean) / std


def test_an_fp32_run_exports_onnx_and_torch_export_that_agree_with_eval(
    tmp_path, teacher_run, capsys
):
    import onnxruntime

    out = tmp_path / "export"
    assert main(["export", str(teacher_run.run_dir), "--out", str(out), "--int8", "ptq",
                 "--calibration-samples", "256"]) == 0  # fmt: skip
    report = json.loads((out / "export.json").read_text())
    files = {f["file"]: f for f in report["files"]}
    assert set(files) == {"model.onnx", "model.pt2", "model.int8.onnx", "model.int8.pt2"}
    assert files["model.onnx"]["agreement_with_pytorch"] == 1.0
    assert files["model.pt2"]["agreement_with_pytorch"] == 1.0
    assert files["model.int8.onnx"]["agreement_with_pytorch"] >= 0.95
    assert abs(files["model.int8.onnx"]["test_top1"] - report["pytorch_test_top1"]) < 0.03

    loaded = load_model(teacher_run.run_dir)
    raw, normalized = raw_and_normalized(loaded.spec)
    with torch.no_grad():
        expected = loaded.model(normalized)
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {session.get_inputs()[0].name: raw.numpy()})[0]
    assert np.array_equal(got.argmax(1), expected.argmax(1).numpy())  # raw pixels in, same answers
    assert np.allclose(got, expected.numpy(), atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["input"] == "raw" and json.loads(meta["classes"])[:2] == ["0", "1"]
    assert json.loads(meta["normalization"])["mean"] == pytest.approx(list(loaded.spec.mean))
    assert meta["kdistill_version"] and str(teacher_run.run_dir) in meta["source"]
    program = torch.export.load(str(out / "model.pt2")).module()
    assert torch.allclose(program(raw), expected, atol=1e-4)

    capsys.readouterr()
    assert main(["eval", str(out / "model.onnx"), "--json"]) == 0
    onnx_eval = json.loads(capsys.readouterr().out)
    assert onnx_eval["top1"] == pytest.approx(report["pytorch_test_top1"])


def test_a_quantization_aware_run_exports_its_int8_graph(tmp_path):
    cfg = digits_config(tmp_path, "train.epochs=2", "train.measure_latency=false",
                        "policies=[{kind: quantization, weight_bits: 4, activation_bits: 8}]")  # fmt: skip
    result = run(cfg, **QUIET)
    out = tmp_path / "export"
    assert main(["export", str(result.run_dir), "--out", str(out), "--format", "onnx"]) == 0
    report = json.loads((out / "export.json").read_text())
    (entry,) = report["files"]
    assert entry["file"] == "model.int8.onnx" and entry["precision"] == "int8"
    assert entry["agreement_with_pytorch"] >= 0.97


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite"], "export formats must be among onnx, pt2"),
        (["--calibration-samples", "0", "--int8", "ptq"], "calibration samples must be >= 1"),
    ],
)
def test_export_mistakes_are_clear_errors(tmp_path, teacher_run, capsys, argv, message):
    assert main(["export", str(teacher_run.run_dir), "--out", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err


def test_an_unfinished_run_is_not_exported(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
