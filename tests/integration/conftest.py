"""Helpers for end-to-end runs on the bundled digits."""

import pytest
import torch

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


# language-model tests: their words, and a corpus of them (test_language_models, test_lm_compression)
WORDS = [
    "the",
    "student",
    "reads",
    "what",
    "the",
    "teacher",
    "writes",
    "and",
    "learns",
    "the",
    "next",
    "byte",
    "of",
    "every",
    "line",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small documents of 60 words drawn independently."""
    root = tmp_path_factory.mktemp("corpus")
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (60,), generator=g)]
        (root / f"doc{i:02d}.txt").write_text(" ".join(words) + ".\n")
    return root
