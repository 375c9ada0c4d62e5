"""The benchmark scripts start and record how their results were made (their measurements
need Fashion-MNIST and a trained teacher, so they are run by hand: docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script",
    [
        "fmnist_kd.py",
        "kd_step_overhead.py",
        "ddp_scaling.py",
        "fmnist_collapse.py",
        "busy_demo.py",
        "teacher_throughput.py",
        "streaming.py",
        "precision_auto.py",
        "distiller_examples.py",
        "fused_token_loss.py",
        "cached_startup.py",
        "lm_distill.py",
    ],
)
def test_each_script_starts(script):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_a_result_records_its_command_and_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["fmnist_kd.py", "--rounds", "5"])
    from common import provenance, publish

    report = {**provenance("fmnist_kd.py"), "ratios": {"cached_over_student": 1.16}}
    publish(report, str(tmp_path / "results" / "r.json"))
    written = json.loads((tmp_path / "results" / "r.json").read_text())
    assert written["command"] == "python benchmarks/fmnist_kd.py --rounds 5"
    assert written["machine"]["cpus"] >= 1 and written["ratios"]["cached_over_student"] == 1.16
    assert json.loads(capsys.readouterr().out) == written
