"""Sweeps (grid and Optuna) resume and share the teacher; reports render real figures."""

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from kdistill.cli.main import main


@pytest.fixture
def grid_args(tmp_path, teacher_run):
    return [
        "sweep", "--base", "digits/distill", "--grid", "kd.temperature=1,4", "--grid", "kd.alpha=0.1,0.5",
        "--seeds", "0,1", "--out", str(tmp_path / "sweeps"), "--name", "g",
        "--set", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        # positional key=value overrides, as train takes them (--set is the same)
        "train.epochs=2", "train.tensorboard=false", "train.measure_latency=false",
    ]  # fmt: skip


def test_grid_sweep_summary_resume_and_shared_teacher(tmp_path, grid_args, capsys):
    assert main(grid_args) == 0
    out = capsys.readouterr().out
    assert "best setting first" in out
    sweep_dir = tmp_path / "sweeps" / "g"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["kind"] == "grid" and len(summary["rows"]) == 4
    for row in summary["rows"]:
        assert (
            row["n_seeds"] == 2
            and row["test_top1_worst"] <= row["test_top1_mean"] <= row["test_top1_best"]
        )
    with open(sweep_dir / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    caches = list((sweep_dir / "runs" / "teacher-cache").glob("*/manifest.json"))
    assert len(caches) == 1, "one teacher cache shared by every setting"
    # an interrupted sweep: one run lost its summary (as if it had not finished); run again
    run_dirs = [Path(d) for row in summary["rows"] for d in row["run_dirs"]]
    assert json.loads((run_dirs[0] / "summary.json").read_text())["epochs"] == 2
    victim = run_dirs[3]
    (victim / "summary.json").unlink()
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs if d != victim}
    assert main(grid_args) == 0
    again = json.loads((sweep_dir / "summary.json").read_text())
    assert [r["test_top1_mean"] for r in again["rows"]] == [
        r["test_top1_mean"] for r in summary["rows"]
    ]
    assert (victim / "summary.json").is_file()  # the missing run was trained again
    assert {
        d: (d / "summary.json").stat().st_mtime_ns for d in before
    } == before  # the others were not


def test_search_sweep_resumes_its_study(tmp_path, teacher_run, capsys):
    sweep_file = tmp_path / "search.yaml"
    sweep_file.write_text(
        "base: digits/distill\n"
        "name: s\n"
        f"out_dir: {tmp_path / 'sweeps'}\n"
        f"overrides: [kd.teachers.0.checkpoint={teacher_run.run_dir}, train.epochs=2, train.tensorboard=false, train.measure_latency=false]\n"
        "seeds: [0]\n"
        "search:\n  trials: 3\n  seed: 0\n  space:\n    kd.temperature: {low: 1, high: 20, log: true}\n    kd.alpha: [0.1, 0.5]\n"
    )
    assert main(["sweep", str(sweep_file)]) == 0
    first = json.loads((tmp_path / "sweeps" / "s" / "summary.json").read_text())
    assert first["kind"] == "search" and len(first["rows"]) == 3
    assert (tmp_path / "sweeps" / "s" / "optuna.db").is_file()
    capsys.readouterr()
    assert main(["sweep", str(sweep_file)]) == 0  # finished: nothing is trained again
    out = capsys.readouterr().out
    assert "3 of 3 trials done" in out and "trial 0 seed 0" not in out
    sweep_file.write_text(sweep_file.read_text().replace("trials: 3", "trials: 4"))
    assert main(["sweep", str(sweep_file)]) == 0
    more = json.loads((tmp_path / "sweeps" / "s" / "summary.json").read_text())
    assert len(more["rows"]) == 4
    assert [r["kd.temperature"] for r in more["rows"][:3]] == [
        r["kd.temperature"] for r in first["rows"]
    ]


def test_sweep_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "base: digits/distill\ngrid: {kd.temperature: [1]}\nsearch: {space: {kd.alpha: [0.1]}}\n"
    )
    assert main(["sweep", str(bad)]) == 1
    assert "exactly one of grid: or search:" in capsys.readouterr().err
    assert main(["sweep", "--base", "digits/distill"]) == 2
    assert main(["sweep", "--base", "digits/distill", "--grid", "kd.temperature"]) == 2


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_report_renders_runs_and_sweeps(tmp_path, grid_args, teacher_run, capsys):
    import base64

    assert main(grid_args) == 0
    assert main(["demo", "--out", str(tmp_path / "demo"), "-q"]) == 0
    out = tmp_path / "report"
    assert (
        main(["report", str(tmp_path / "demo"), str(tmp_path / "sweeps" / "g"), "--out", str(out)])
        == 0
    )
    page = (out / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    assert len(checker.images) >= 5
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    figures = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert {
        "figures/learning_curves.png",
        "figures/calibration.png",
        "figures/agreement.png",
        "figures/sweep_g.png",
        "figures/sweep_g_heatmap.png",
    } <= set(figures)
    for f in figures:
        assert (out / f).stat().st_size > 1000
        assert len(Image.open(out / f).convert("RGB").getcolors(1 << 16)) > 20  # drawn
    assert "| digits-teacher | teacher |" in md and "| digits-distill | distilled |" in md
    assert "Sweep g" in md
    # the demo's scratch student is the sweep's student: drawn as the line to beat
    assert "dotted: the same student from scratch" in md
    # ... trained for 30 epochs against the sweep's 2: the figure says so
    assert "digits-scratch, 30 epochs against the sweep's 2" in md


def test_report_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "no finished kdistill run" in capsys.readouterr().err


def test_a_failing_setting_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    args = [
        "sweep", "--base", "digits/scratch", "--grid", "optim.lr=0.05,1e12", "--out", str(tmp_path), "--name", "f",
        "--set", "train.epochs=2", "--set", "train.tensorboard=false", "--set", "train.measure_latency=false",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out and "failed" in out
    rows = json.loads((tmp_path / "f" / "summary.json").read_text())["rows"]
    good, bad = sorted(rows, key=lambda r: r["optim.lr"])
    assert good["n_seeds"] == 1 and good["test_top1_mean"] > 0.5
    assert bad["n_failed"] == 1 and bad["test_top1_mean"] is None and "became" in bad["failures"][0]
    report = tmp_path / "r"
    assert main(["report", str(tmp_path / "f"), "--out", str(report)]) == 0
    assert "failed" in (report / "report.md").read_text()
