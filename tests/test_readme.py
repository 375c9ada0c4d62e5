"""The README's Python example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path):
    blocks = python_blocks()
    assert blocks, "the README has a Python example"
    example = blocks[0]
    assert 15 <= len(example.strip().splitlines()) <= 30
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "'distill'" in out.stdout and (tmp_path / "student.pt").is_file()


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = re.search(r"^(python3 -m venv .*pytest)$", text, flags=re.M).group(1)
    assert test_command in ci, "the CI runs the README's test command"
    assert re.search(r"^python3 -m venv .*kdistill demo$", text, flags=re.M)
