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


def test_an_export_folder_is_always_one_models(tmp_path, teacher_run, monkeypatch, capsys):
    """Exporting run B where run A was exported replaces the folder whole; a failure half way
    (a full disk) leaves A's export as it was, never B's model.onnx beside A's export.json."""
    import kdistill.experiment.export as export_step

    out = tmp_path / "deploy"
    run = str(teacher_run.run_dir)
    assert main(["export", run, "--out", str(out), "--format", "onnx,pt2"]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(first) == {"model.onnx", "model.pt2", "export.json"}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_step, "write_torch_export", disk_full)
    assert main(["export", run, "--out", str(out), "--format", "onnx,pt2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # A's, untouched
    assert not list(tmp_path.glob(".deploy.*"))  # no staging folder left behind
    monkeypatch.undo()
    # a second export with other formats replaces the set: nothing of the first remains
    assert main(["export", run, "--out", str(out), "--format", "onnx"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.onnx", "export.json"}
    assert [f["file"] for f in json.loads((out / "export.json").read_text())["files"]] == [
        "model.onnx"
    ]


def test_export_refuses_a_file_or_a_foreign_folder_as_out(tmp_path, teacher_run, capsys):
    run = str(teacher_run.run_dir)
    (tmp_path / "file").write_text("mine")
    assert main(["export", run, "--out", str(tmp_path / "file")]) == 1
    assert "is a file; give a directory" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"not mine to delete")
    assert main(["export", run, "--out", str(tmp_path / "photos")]) == 1
    assert "not a kdistill export" in capsys.readouterr().err
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"not mine to delete"


def test_ptq_calibrates_on_what_the_training_split_has(tmp_path, teacher_run, capsys):
    out = tmp_path / "export"
    argv = ["export", str(teacher_run.run_dir), "--out", str(out), "--format", "onnx",
            "--int8", "ptq", "--calibration-samples", "100000"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "100000 calibration samples asked for, the training split has 1438" in printed
    import onnx

    proto = onnx.load(str(out / "model.int8.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "1438 calibration samples" in json.dumps(meta)
