"""TensorBoard: each run once, scalars per epoch and per logging interval, the config as text,
hyper-parameters with final metrics."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdistill.cli.main import main


def test_tensorboard_shows_each_run_once_with_steps_config_and_hparams(tmp_path):
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path), "--name",
            "tb-run", "-q", "train.measure_latency=false"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "tb-run").is_symlink()  # the name link exists ...
    runs = [p for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")]
    assert len({p.parent for p in runs}) == 1  # ... but only the log tree holds events
    events = EventAccumulator(str(runs[0].parent), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"test/top1", "train/loss", "train_steps/loss", "train_steps/lr"} <= set(scalars)
    steps = [e.step for e in events.Scalars("train_steps/loss")]
    assert len(steps) >= 2 and steps == sorted(steps)  # every 50 optimizer steps, not per epoch
    assert "config/text_summary" in events.Tags()["tensors"]
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins and "_hparams_/experiment" in plugins
