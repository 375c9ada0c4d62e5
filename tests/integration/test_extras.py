"""Optional features without their extras: a one-line error naming the pip command, or (for
TensorBoard) one notice and a run that goes on."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it fails
from kdistill.cli.main import main
sys.exit(main({argv!r}))
"""


def kdistill_without(blocked, argv, cwd):
    code = SCRIPT.format(blocked=blocked, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd
    )


DIGITS = ["train", "--dataset", "digits", "--epochs", "1", "model.arch=lenet5", "model.args={}",
          "train.measure_latency=false", "-q"]  # fmt: skip


@pytest.mark.parametrize(
    ("blocked", "extra", "overrides"),
    [
        (["torchao"], "quant", ["policies=[{kind: quantization, weight_bits: 4}]"]),
        (["onnxruntime"], "quant", ["policies=[{kind: quantization, weight_bits: 4}]"]),
        (["torch_pruning"], "prune", ["policies=[{kind: channel_pruning, ratio: 0.5}]"]),
    ],
    ids=["quant-torchao", "quant-onnxruntime", "prune"],
)
def test_a_policy_without_its_extra_stops_before_training(tmp_path, blocked, extra, overrides):
    out = kdistill_without(blocked, [*DIGITS, "--out", str(tmp_path), *overrides], tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert f"pip install 'kdistill[{extra}]'" in lines[-1] and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("*/seed-0/checkpoints/*"))  # nothing was trained


def test_a_run_without_tensorboard_says_so_once_and_finishes(tmp_path):
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path), "-q"]
    out = kdistill_without(["tensorboard"], argv, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("pip install 'kdistill[tensorboard]'") == 1
    (run,) = tmp_path.glob("*/seed-0")
    assert (run / "summary.json").is_file() and not (tmp_path / "tensorboard").exists()


def test_an_optuna_sweep_without_optuna(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\nbase: digits/distill\nseeds: [0]\n"
        "search: {trials: 2, space: {kd.temperature: {low: 1.0, high: 8.0}}}\n"
    )
    out = kdistill_without(
        ["optuna"], ["sweep", str(sweep), "--out", str(tmp_path / "o")], tmp_path
    )
    assert out.returncode == 1 and "pip install 'kdistill[sweep]'" in out.stderr, out.stderr[-2000:]


def test_onnx_export_without_onnx(tmp_path):
    code = (
        "import sys, torch\nsys.modules['onnx'] = None\n"
        "from kdistill.compression.export import write_onnx\n"
        "write_onnx(torch.nn.Linear(4, 2), (4,), 'm.onnx', {})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "ONNX export and int8 ONNX evaluation needs the package 'onnx', which is not installed: "
            "pip install 'kdistill[onnx]'"
        )
    )


def test_a_quantized_run_prints_no_third_party_warnings(tmp_path):
    out = kdistill_without(
        [], ["train", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path), "-q",
             "train.measure_latency=false", "policies=[{kind: quantization, weight_bits: 4}]"],
        tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == "", out.stderr[-2000:]  # e.g. torch's register_constant() deprecation
    assert (next(tmp_path.glob("*/seed-0")) / "model.int8.onnx").is_file()
