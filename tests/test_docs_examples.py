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
