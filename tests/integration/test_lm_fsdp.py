"""FSDP2 (``train.parallel: fsdp``): a language-model student sharded over 2 CPU processes
(gloo), its teacher sharded too, takes the steps of one process over the same global batch,
and resumes after every process stopped."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .test_language_models import hf_model_dir

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

STOPPER = '''
import os
from pathlib import Path
from kdistill.engine import Callback

class StopBeforeEpoch2(Callback):
    """Every process stops at the start of the second epoch, once."""
    def on_epoch_start(self, trainer, epoch):
        marker = Path(os.environ["STOP_MARKER"] + os.environ.get("RANK", "0"))
        if epoch == 1 and not marker.exists():
            marker.write_text("stopped")
            raise SystemExit(3)
'''


def test_fsdp_on_two_processes_equals_one_and_resumes(tmp_path, corpus):
    from kdistill.experiment.loading import load_model

    teacher = hf_model_dir(tmp_path / "teacher", transformers, tokenizers, layers=2, seed=0)
    (tmp_path / "stopper.py").write_text(STOPPER)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "STOP_MARKER": str(tmp_path / "stopped-"),
    }
    common = [
        sys.executable, "-m", "kdistill", "train", "--out", str(tmp_path), "-q",
        "data.name=text", f"data.files=[{corpus}]", "data.block=16", "data.batch_size=8",
        "data.eval_batch_size=6", "model.arch=gpt_nano",
        "model.args={layers: 2, dim: 32, heads: 2}", f"kd.teachers=[{{checkpoint: {teacher}}}]",
        "kd.teacher_cache.enabled=false", "kd.teacher_precision=fp32", "kd.min_teacher_top1=0",
        "optim.name=sgd", "optim.lr=0.3", "optim.momentum=0.9", "train.epochs=2",
        "train.deterministic=true", "train.measure_latency=false", "train.tensorboard=false",
    ]  # fmt: skip

    def train(name, *extra):
        return subprocess.run(
            [*common, "--name", name, *extra], capture_output=True, text=True, timeout=300,
            env=env,
        )  # fmt: skip

    one = train("one")
    assert one.returncode == 0, one.stderr[-2000:]
    sharded = ["--nproc", "2", "train.parallel=fsdp", "train.shard_teacher=true",
               "train.callbacks=[stopper:StopBeforeEpoch2]"]  # fmt: skip
    stopped = train("two", *sharded)
    assert stopped.returncode != 0
    (run_dir,) = tmp_path.glob("two-*/seed-0")
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["epoch"] == 0  # the whole weights gathered after epoch 1, written once
    two = train("two", *sharded, "--resume")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "the student sharded with FSDP2" in two.stdout
    assert "teacher sharded over 2 processes" in two.stdout and "resuming" in two.stdout
    a, b = load_model(tmp_path / "one").model, load_model(tmp_path / "two").model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-4, msg=name)
    ra = json.loads((tmp_path / "one" / "summary.json").read_text())
    rb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert rb["test_perplexity"] == pytest.approx(ra["test_perplexity"], rel=1e-4)
    assert rb["teacher_test_perplexity"] == pytest.approx(ra["teacher_test_perplexity"], rel=1e-5)


def test_what_cannot_run_sharded_is_refused_by_name(tmp_path, corpus):
    from kdistill.config import ConfigError

    from .test_language_models import lm_config

    with pytest.raises(ConfigError, match="train.shard_teacher shards the teacher with FSDP2"):
        lm_config(tmp_path, corpus, "train.shard_teacher=true")
    with pytest.raises(ConfigError, match="image runs use ddp"):
        from kdistill.config import RunConfig, apply_overrides

        apply_overrides(RunConfig(), ["train.parallel=fsdp"])
    with pytest.raises(ConfigError, match="a sharded student must run the same forwards"):
        lm_config(tmp_path, corpus, "train.parallel=fsdp", "kd.teachers=[{checkpoint: x}]",
                  "kd.teacher_cache.enabled=false", "kd.on_policy={lmbda: 0.5}")  # fmt: skip
    with pytest.raises(ConfigError, match="which a sharded teacher cannot run"):
        lm_config(tmp_path, corpus, "train.parallel=fsdp", "train.shard_teacher=true",
                  "kd.teachers=[{checkpoint: x}]", "kd.teacher_cache.enabled=true")  # fmt: skip
    with pytest.raises(ConfigError, match="cannot be pruned or fake-quantized in place"):
        lm_config(tmp_path, corpus, "train.parallel=fsdp",
                  "policies=[{kind: lm_quantization, weight_bits: 4}]")  # fmt: skip
