"""Python examples in docs/ run as written."""

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_compression_loop_example(tmp_path):
    (example,) = re.findall(
        r"```python\n(.*?)```", (DOCS / "compression.md").read_text(), flags=re.S
    )
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(tmp_path / "student.int8.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].shape[1] == 64


def test_methods_example(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", (DOCS / "methods.md").read_text(), flags=re.S)
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'at_weighted'" in out.stdout and "'distill_weighted'" in out.stdout


def docs_example(name, kind):
    """The code block after ``<!-- docs-example: NAME -->`` in docs/distiller.md."""
    text = (DOCS / "distiller.md").read_text()
    (block,) = re.findall(rf"<!-- docs-example: {name} -->\n```{kind}\n(.*?)```", text, flags=re.S)
    return block


def test_distiller_worked_example_prints_the_config_shown(tmp_path, capsys, monkeypatch):
    import shlex

    import yaml

    from kdistill.cli.main import main
    from kdistill.config import load_config
    from kdistill.data import build_data
    from kdistill.experiment.teachers import model_spec
    from kdistill.models import build_model, save_model_file

    # the dry run resolves the teacher the command names: a LeNet-5 file for the digits
    monkeypatch.chdir(tmp_path)
    cfg = load_config("digits/teacher")
    data = build_data(cfg.data)
    spec = model_spec(cfg.model, data, cfg.data)
    teacher = build_model(spec.arch, data.num_classes, data.input_shape, spec.args)
    (tmp_path / "runs").mkdir()
    save_model_file(tmp_path / "runs" / "digits-teacher", teacher.state_dict(), spec)
    (tmp_path / "agp.yaml").write_text(docs_example("schedule", "yaml"))
    command = shlex.split(docs_example("command", "bash").replace("\\\n", " "))
    assert command[:2] == ["kdistill", "distiller"]
    written = tmp_path / "lenet5-agp.yaml"
    argv = [a if a != "lenet5-agp.yaml" else str(written) for a in command[1:]]
    argv = [a if a != "agp.yaml" else str(tmp_path / "agp.yaml") for a in argv]
    assert main([*argv, "--dry-run"]) == 0
    assert yaml.safe_load(written.read_text()) == yaml.safe_load(docs_example("config", "yaml"))


def test_streaming_example(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", (DOCS / "data.md").read_text(), flags=re.S)
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data pipeline: stream (asked for)" in out.stdout
    assert "32 training images, 4 batches per epoch" in out.stdout
