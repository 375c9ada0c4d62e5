"""A sweep's table marks collapsed and failed settings (summary, console and report)."""

from kdistill.config import RunConfig
from kdistill.experiment.sweep import Task, format_rows, summarize
from kdistill.reporting.report import sweep_table


def outcome(top1, **extra):
    return {"test_top1": top1, "total_time_s": 1.0, "run_dir": "r", **extra}


def test_collapsed_and_failed_settings_are_marked():
    cfg = RunConfig()
    tasks = [
        Task(t, {"kd.temperature": float(t + 1)}, seed, cfg) for t in range(3) for seed in (0, 1)
    ]
    outcomes = [
        outcome(0.9), outcome(0.91),  # healthy
        outcome(0.1, collapsed=True, warnings=["collapsed"]), outcome(0.88),  # warned collapse
        {"failed": "the loss became nan", "run_dir": "r", "collapsed": False},
        {"failed": "collapsed on the test split", "run_dir": "r", "collapsed": True},
    ]  # fmt: skip
    rows = summarize(tasks, outcomes, "test_top1")
    assert [r["status"] for r in rows] == ["ok", "collapsed", "collapsed"]
    assert rows[1]["n_collapsed"] == 1 and rows[1]["n_seeds"] == 2
    assert rows[2]["n_failed"] == 2 and rows[2]["test_top1_mean"] is None
    text = format_rows({"keys": ["kd.temperature"], "rows": rows})
    assert "COLLAPSED (1 of 2 seeds)" in text
    _, table = sweep_table({"keys": ["kd.temperature"], "rows": rows})
    assert [row[-1] for row in table] == [
        "ok",
        "COLLAPSED (1 of 2 seeds)",
        "COLLAPSED (1 of 2 seeds)",
    ]
