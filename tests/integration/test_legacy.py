"""Run directories written before run records were typed and checksummed (kdistill at commit
e36a4de; the fixture was made by it) still load, or say what to do."""

import shutil
from pathlib import Path

import pytest

from kdistill.cli.main import main
from kdistill.engine import Checkpointer, CheckpointError
from kdistill.experiment import load_model
from kdistill.record import RunRecord

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-run"


def test_an_old_run_evaluates_and_reports(tmp_path, capsys):
    run_dir = LEGACY / "seed-0"
    record = RunRecord.read(run_dir)
    assert record.legacy and record.test_top1 == pytest.approx(0.6657, abs=1e-4)
    loaded = load_model(run_dir)
    assert not loaded.checked  # its model file predates the weights' digest
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "weights unchecked" in out and "top-1 66.57%" in out
    assert main(["report", str(LEGACY), "--out", str(tmp_path / "report")]) == 0
    assert "legacy-mlp" in (tmp_path / "report" / "report.md").read_text()


def test_an_old_unfinished_run_says_how_to_go_on(tmp_path):
    run_dir = tmp_path / "seed-0"
    shutil.copytree(LEGACY / "seed-0", run_dir)
    with pytest.raises(CheckpointError, match="older kdistill.*start over with --force"):
        Checkpointer.latest(run_dir)
