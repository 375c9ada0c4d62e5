"""The import-linter contract in pyproject.toml is the map of the architecture: it holds, and it
fails when a lower layer imports a higher one (docs/architecture.md)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [exe, "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_layers_hold():
    out = lint_imports(ROOT, ROOT / "src")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("losses/functional.py", "import kdistill.cli.main", "Layers"),
        ("engine/trainer.py", "import kdistill.compression.callbacks", "Layers"),
        ("config/schema.py", "import torch", "never import torch"),
        ("teachers/frozen.py", "import kdistill.objectives", "Layers"),
    ],
)
def test_a_wrong_import_breaks_the_contract(tmp_path, module, bad_import, contract):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "kdistill", src / "kdistill")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(src / "kdistill" / module, "a") as f:
        f.write(f"\n{bad_import}  # noqa\n")
    out = lint_imports(tmp_path, src)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts")[-1]
    assert contract in broken, out.stdout[-3000:]
