"""Quantization-aware training of residual networks as users run it: the command of the QAT
issue, the shipped ResNet-18 w4a8 recipe on CIFAR-format data, and Distiller's own 8-bit QAT
schedule through ``kdistill distiller``. Each trains, converts to int8 and exports ONNX."""

import json

from kdistill.cli.main import main

from .test_distiller_cli import only_run, write_cifar10


def quantization(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["compression"]["quantization"]


def test_the_command_that_failed_on_every_residual_network(tmp_path):
    out = tmp_path / "runs"
    argv = ["train", "fashion-mnist/lenet5-w4a8-qat", "data.name=digits",
            "model.arch=resnet8_cifar", "model.args={}", "model.checkpoint=null",
            "policies.0.overrides={}", "train.epochs=1", f"--out={out}", "-q",
            "train.measure_latency=false"]  # fmt: skip
    assert main(argv) == 0
    run_dir = only_run(out)
    q = quantization(run_dir)
    assert set(q["layers"].values()) == {"w4a8"} and len(q["layers"]) == 10
    assert (run_dir / "model.int8.onnx").is_file()
    assert 0.0 <= q["int8_test_top1"] <= 1.0


def test_the_shipped_resnet18_w4a8_recipe_on_cifar_batches(tmp_path):
    data = tmp_path / "cifar10"
    write_cifar10(data, per_class=4)
    out = tmp_path / "runs"
    # a stand-in epoch on 40 images: what is tested is the path, not the accuracy
    common = [f"data.root={data}", "train.epochs=1", "data.batch_size=20",
              "train.on_collapse=warn", "train.measure_latency=false", f"--out={out}",
              "-q"]  # fmt: skip
    assert main(["train", "cifar10/resnet18-scratch", *common, "--name=teacher"]) == 0
    teacher = only_run(out)
    argv = ["train", "cifar10/resnet18-w4a8-distill", *common, f"model.checkpoint={teacher}",
            f"kd.teachers.0.checkpoint={teacher}", "kd.min_teacher_top1=0",
            "--name=student"]  # fmt: skip
    assert main(argv) == 0
    (student,) = out.glob("student-*/seed-*")
    q = quantization(student)
    # the recipe keeps the first conv and fc in float, every other layer at 4-bit weights
    assert q["layers"]["conv1"] == "fp32" and q["layers"]["fc"] == "fp32"
    assert q["layers"]["layer4.1.conv2"] == "w4a8"
    assert (student / "model.int8.onnx").is_file()


# Distiller's examples/quantization/quant_aware_train/quant_aware_train_linear_quant.yaml:
# 8-bit weights (per channel) and activations, asymmetric, for the whole run
DISTILLER_QAT = """\
quantizers:
  linear_quantizer:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    mode: 'ASYMMETRIC_UNSIGNED'
    ema_decay: 0.999
    per_channel_wts: True

policies:
    - quantizer:
        instance_name: linear_quantizer
      starting_epoch: 0
      ending_epoch: 300
      frequency: 1
"""


def test_distillers_qat_schedule_runs_unchanged_on_resnet18(tmp_path, capsys):
    data = tmp_path / "cifar10"
    write_cifar10(data, per_class=4)
    schedule = tmp_path / "quant_aware_train_linear_quant.yaml"
    schedule.write_text(DISTILLER_QAT)
    out = tmp_path / "logs"
    # the command line of the schedule's header, at CIFAR size and one epoch
    argv = ["distiller", str(data), "-a", "resnet18", "-p", "50", "-b", "20", "--epochs", "1",
            f"--compress={schedule}", "--lr", "0.0001", "--vs", "0", "-o", str(out),
            "-q"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ema_decay" in printed  # noted: kdistill's observers track the ranges
    run_dir = only_run(out)
    q = quantization(run_dir)
    assert set(q["layers"].values()) == {"w8a8"}
    assert (run_dir / "model.int8.onnx").is_file()
