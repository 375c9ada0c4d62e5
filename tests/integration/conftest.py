"""Helpers for end-to-end runs on the bundled digits."""

import pytest

from kdistill.config import RunConfig, apply_overrides
from kdistill.experiment import run

FAST = ["train.tensorboard=false", "train.threads=2"]


def digits_config(out_dir, *overrides):
    return apply_overrides(
        RunConfig(),
        [f"out_dir={out_dir}", "model.args.hidden=[32]", "train.epochs=3", *FAST, *overrides],
    )


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A LeNet-5 teacher trained once for the whole session (a few seconds)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = apply_overrides(
        RunConfig(),
        [f"out_dir={out}", "name=teacher", "model.arch=lenet5", "train.epochs=8", *FAST],
    )
    return run(cfg, progress=False, log=lambda _: None)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``kdistill demo`` run once: (output directory, what it printed)."""
    import contextlib
    import io

    from kdistill.cli.main import main

    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), "-q"]) == 0
    return out, printed.getvalue()
