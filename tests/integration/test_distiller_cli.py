"""``kdistill distiller``: Distiller command lines and schedules, run end to end."""

import json
import pickle

import numpy as np
import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import load_config
from kdistill.experiment import load_model
from kdistill.models import load_state_file

SCHEDULE = """\
version: 1
pruners:
  filter_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.2
    final_sparsity: 0.5
    group_type: Filters
    weights: [module.features.0.weight]
  fc_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.8
    weights: [module.classifier.1.weight, module.classifier.3.weight]
regularizers:
  l1:
    class: L1Regularizer
    reg_regims:
      module.features.3.weight: 0.00002
lr_schedulers:
  decay:
    class: MultiStepMultiGammaLR
    milestones: [2, 4]
    gammas: [0.5, 0.2]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: lenet5
    dataset: digits
policies:
  - pruner: {instance_name: filter_pruner}
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
  - pruner: {instance_name: fc_pruner}
    starting_epoch: 0
    ending_epoch: 4
    frequency: 1
  - regularizer: {instance_name: l1}
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
  - lr_scheduler: {instance_name: decay}
    starting_epoch: 0
    ending_epoch: 5
    frequency: 1
  - extension: {instance_name: net_thinner}
    epochs: [3]
"""


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def only_run(out):
    (run_dir,) = out.glob("*/seed-*")
    return run_dir


def test_a_distillation_command_with_its_schedule(tmp_path, teacher_run, capsys):
    schedule = tmp_path / "agp.yaml"
    schedule.write_text(SCHEDULE)
    out = tmp_path / "logs"
    argv = [
        "distiller", "digits", "-a", "lenet5", "--epochs", "5", "-b", "32", "--lr", "0.05",
        "--seed", "0", "--kd-teacher", "lenet5", "--kd-resume", str(teacher_run.run_dir),
        "--kd-temp", "4", "--kd-dw", "0.7", "--kd-sw", "0.3", "--kd-start-epoch", "1",
        "--compress", str(schedule), "-o", str(out), "-n", "agp", "-j", "8", "-p", "50",
        "--vs", "0.1", "--cpu", "-q", "--write-config", str(tmp_path / "agp-kdistill.yaml"),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "--workers 8 ignored" in printed and "the equivalent kdistill config" in printed
    run_dir = only_run(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    pruning = summary["compression"]["pruning"]
    # AGP reached the scheduled sparsity on the named weights
    assert pruning["layers"]["classifier.1.weight"] == pytest.approx(0.8, abs=1e-3)
    assert pruning["layers"]["classifier.3.weight"] == pytest.approx(0.8, abs=1e-3)
    # the structured pruner zeroed half of the first convolution's filters, which the thinner
    # then removed, with the next convolution's inputs
    model, _spec = load_model(run_dir)
    assert model.features[0].out_channels == 3 and model.features[3].in_channels == 3
    history = rows(run_dir)
    assert [r["lr"] for r in history] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.005])
    # the regularizer's penalty in its epochs only; distillation from --kd-start-epoch on
    # (split at --kd-start-epoch: from there on Distiller scales it by --kd-sw)
    penalties = [sorted(k for k in r["train"] if k.startswith("loss_reg_l1")) for r in history]
    assert penalties == [["loss_reg_l1"]] + [["loss_reg_l1_1"]] * 2 + [[]] * 2
    assert [("loss_distill" in r["train"]) for r in history] == [False] + [True] * 4
    # the written config is the native form of the same run
    cfg = load_config(str(tmp_path / "agp-kdistill.yaml"))
    assert (cfg.kd.alpha, cfg.kd.beta, cfg.kd.temperature, cfg.kd.start_epoch) == (0.3, 0.7, 4, 1)
    # two pruners, the penalty split in 2, and the thinning
    assert [p.kind for p in cfg.policies] == [
        "pruning", "pruning", "regularization", "regularization", "thinning"
    ]  # fmt: skip
    assert cfg.schedule.gammas == (0.5, 0.2)


QAT = """\
quantizers:
  linear_quantizer:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 4
    mode: ASYMMETRIC_UNSIGNED
    per_channel_wts: true
    overrides:
      features.0: {bits_weights: null, bits_activations: null}
policies:
  - quantizer: {instance_name: linear_quantizer}
    starting_epoch: 1
    ending_epoch: 3
    frequency: 1
"""


def test_quantization_aware_training_converts_to_int8(tmp_path):
    schedule = tmp_path / "qat.yaml"
    schedule.write_text(QAT)
    out = tmp_path / "logs"
    argv = ["distiller", "digits", "-a", "lenet5", "--epochs", "3", "-b", "32", "--lr", "0.05",
            "--seed", "0", "--compress", str(schedule), "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    q = json.loads((only_run(out) / "summary.json").read_text())["compression"]["quantization"]
    assert q["layers"]["features.0"] == "fp32" and q["layers"]["features.3"] == "w4a8"
    assert (only_run(out) / "model.int8.onnx").is_file()
    assert abs(q["int8_test_top1"] - q["fake_quant_test_top1"]) <= 0.02


def write_cifar10(root, per_class=12):
    """A learnable CIFAR-10 in the python batch format: each class has its own colour."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    colours = rng.integers(0, 256, size=(10, 3))

    def batch(n):
        labels = np.repeat(np.arange(10), n)
        images = colours[labels][:, :, None] + rng.normal(0, 20, size=(len(labels), 3, 1024))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        return {b"data": data, b"labels": labels.tolist()}

    for i in range(1, 6):
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_class)))
    (base / "test_batch").write_bytes(pickle.dumps(batch(per_class)))


def test_distiller_checkpoints_teach_on_cifar_batches(tmp_path, capsys):
    data = tmp_path / "cifar10"
    write_cifar10(data)
    common = [
        "-b",
        "40",
        "--lr",
        "0.05",
        "--seed",
        "0",
        "--vs",
        "0",
        "-q",
        "-o",
        str(tmp_path / "logs"),
    ]
    assert (
        main(
            [
                "distiller",
                str(data),
                "-a",
                "resnet8_cifar",
                "--epochs",
                "3",
                "-n",
                "teacher",
                *common,
            ]
        )
        == 0
    )
    teacher_dir = only_run(tmp_path / "logs")
    state = load_state_file(teacher_dir)
    # what Distiller's save_checkpoint writes, minus the pickled classes (see below)
    ckpt = tmp_path / "teacher.pth.tar"
    torch.save(
        {"epoch": 2, "arch": "resnet8_cifar", "dataset": "cifar10", "best_top1": 90.0,
         "state_dict": {f"module.{k}": v for k, v in state.items()}},
        ckpt,
    )  # fmt: skip
    argv = ["distiller", str(data), "-a", "resnet8_cifar", "--epochs", "1", "-n", "student",
            "--kd-teacher", "resnet8_cifar", "--kd-resume", str(ckpt), *common]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "plain weights, architecture resnet8_cifar" in printed
    # A real Distiller checkpoint also pickles its optimizer's class: weights_only refuses it
    pickled = tmp_path / "distiller.pth.tar"
    torch.save(
        {"arch": "resnet8_cifar", "optimizer_type": torch.optim.SGD, "state_dict": state}, pickled
    )
    argv[argv.index(str(ckpt))] = str(pickled)
    assert main([*argv, "--force"]) == 1
    err = capsys.readouterr().err
    assert "stores Python objects besides tensors" in err and "Distiller's own" in err


def test_the_checkpoint_names_the_teacher_architecture(tmp_path, teacher_run):
    from kdistill.config import RunConfig, apply_overrides
    from kdistill.experiment import build_run

    state = load_state_file(teacher_run.run_dir)
    ckpt = tmp_path / "t.pth.tar"
    torch.save({"arch": "lenet5", "state_dict": state}, ckpt)
    cfg = apply_overrides(RunConfig(), [f"out_dir={tmp_path}", "model.arch=mlp",
                                        f"kd.teachers=[{{checkpoint: {ckpt}}}]"])  # fmt: skip
    said = []
    build_run(cfg, log=said.append)
    assert any("architecture lenet5 from the checkpoint's arch" in line for line in said)
    torch.save({"arch": "os:system", "state_dict": state}, ckpt)
    with pytest.raises(ValueError, match="does not import code a file names"):
        build_run(cfg, log=lambda _: None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--evaluate"], "--evaluate: evaluate a model with kdistill eval"),
        (["--etrs", "0.5"], "--effective-train-size 0.5: kdistill trains and evaluates on whole"),
        (["--kd-teacher", "resnet20_cifar", "--kd-pretrained"], "never downloads"),
        (["--qe"], "post-training quantization is not implemented"),
    ],
)
def test_refused_flags_say_what_to_use(tmp_path, capsys, extra, message):
    assert main(["distiller", "digits", "-a", "lenet5", "--dry-run", *extra]) == 1
    assert message in capsys.readouterr().err


def test_unknown_flags_are_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distiller", "digits", "-a", "lenet5", "--kd-temprature", "4"])
    assert e.value.code == 2
    assert "unrecognized arguments: --kd-temprature 4; kdistill distiller accepts" in (
        capsys.readouterr().err
    )


def test_dry_run_trains_nothing_and_notes_ignored_flags(tmp_path, capsys):
    argv = ["distiller", "digits", "-a", "resnet20_cifar", "--dry-run", "-o", str(tmp_path / "x"),
            "--masks-sparsity", "--summary", "sparsity", "--confusion", "-v", "--gpus", "0,1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for flag in ("--masks-sparsity", "--summary", "--confusion", "--verbose"):
        assert f"{flag} ignored" in printed
    assert "kdistill train CONFIG --nproc 2" in printed
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cuda", [False, True])
def test_gpus_without_cuda_uses_the_cpu_as_distiller_does(tmp_path, capsys, monkeypatch, cuda):
    monkeypatch.setattr("kdistill.cli.distiller._cuda_available", lambda: cuda)
    argv = ["distiller", "digits", "-a", "mlp", "--dry-run", "-o", str(tmp_path), "--gpu=0",
            "--batch=128"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "batch_size: 128" in printed
    if cuda:
        assert "device: 'cuda:0'" in printed and "no CUDA GPU" not in printed
    else:
        assert "device: cpu" in printed
        assert "--gpus 0: this machine has no CUDA GPU; the run uses the CPU" in printed


def test_distillers_vgg_checkpoint_names_load(tmp_path):
    """Distiller wraps a VGG's features (only) in DataParallel: features.module.0.weight."""
    from kdistill.models import build_model
    from kdistill.models.foreign import load_plain_weights, read_state_dict

    model = build_model("torchvision:vgg11", 10, (3, 32, 32))
    state = {
        (k.replace("features.", "features.module.", 1) if k.startswith("features.") else k): v
        for k, v in model.state_dict().items()
    }
    torch.save({"arch": "vgg11", "state_dict": state}, tmp_path / "vgg.pth.tar")
    fresh = build_model("torchvision:vgg11", 10, (3, 32, 32))
    load_plain_weights(fresh, read_state_dict(tmp_path / "vgg.pth.tar"), "vgg")
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
    )


def test_write_config_never_replaces_an_input_or_an_existing_file(tmp_path, capsys):
    schedule = tmp_path / "sched.yaml"
    schedule.write_text(QAT)
    argv = ["distiller", "digits", "-a", "lenet5", "--epochs", "3", "--compress", str(schedule),
            "--dry-run", "--write-config"]  # fmt: skip
    assert main([*argv, str(schedule)]) == 2
    assert "is the --compress file this command reads" in capsys.readouterr().err
    assert schedule.read_text() == QAT  # the user's schedule is intact
    assert main([*argv, str(schedule), "--force"]) == 2  # not even with --force
    assert schedule.read_text() == QAT
    other = tmp_path / "other.yaml"
    other.write_text("mine")
    assert main([*argv, str(other)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err and other.read_text() == "mine"
    assert main([*argv, str(other), "--force"]) == 0
    assert "kdistill config translated" in other.read_text()


THINNING = """\
version: 1
pruners:
  low_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.10
    final_sparsity: 0.50
    final_sparsity: 0.50
    group_type: Filters
    weights: [module.layer2.0.conv1.weight, module.layer2.1.conv1.weight,
              module.layer2.2.conv1.weight]
  fc_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.05
    final_sparsity: 0.50
    group_type: Rows
    weights: [module.fc.weight]
  late_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.70
    weights: [module.layer3.1.conv1.weight]
extensions:
  net_thinner:
    class: StructureRemover
    thinning_func_str: remove_filters
    arch: resnet20_cifar
    dataset: cifar10
policies:
  - pruner: {instance_name: low_pruner}
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
  - extension: {instance_name: net_thinner}
    epochs: [3]
  - pruner: {instance_name: fc_pruner}
    starting_epoch: 2
    ending_epoch: 7
    frequency: 1
  - pruner: {instance_name: late_pruner}
    starting_epoch: 8
    ending_epoch: 12
    frequency: 2
"""


def test_a_thinning_example_runs_as_distiller_runs_it(tmp_path, capsys):
    """resnet20_filters.schedule_agp.yaml's shape: conv filters pruned, then thinned once, while
    the fc rows' pruner runs on past the thinning (masked, never thinned: Distiller thins 4-D
    weights only), a schedule longer than the run, and a key written twice."""
    schedule = tmp_path / "thin.yaml"
    schedule.write_text(THINNING)
    out = tmp_path / "logs"
    argv = ["distiller", "digits", "--arch", "resnet20_cifar", "--epochs", "5", "--batch=128",
            "--gpu=0", "--lr", "0.05", "--seed", "0", "--compress=" + str(schedule), "-o",
            str(out), "-q", "--on-collapse", "warn"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "the key 'final_sparsity' is written twice (lines 6 and 7)" in printed
    assert "policies[3] (pruner late_pruner) starts at epoch 8, not before --epochs 5: it " \
           "never acts" in printed  # fmt: skip
    assert "pruners.fc_pruner: AGP's last step (epoch 6) is not before --epochs 5" in printed
    assert "reaching 44.4% sparsity at epoch 4 instead of 50.0%" in printed
    assert "thinning at epoch 4: the zeroed filters removed" in printed
    run_dir = only_run(out)
    model, _spec = load_model(run_dir)
    for i in range(3):  # half of each conv1's 32 filters, gone with conv2's matching inputs
        block = model.layer2[i]
        assert block.conv1.out_channels == 16 and block.conv2.in_channels == 16
    assert model.fc.out_features == 10  # rows pruned after the thinning stay, masked
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compression"]["thinning"] == [{"structure": "filters", "epochs": [3]}]
    fc = summary["compression"]["pruning"]["layers"]["fc.weight"]
    assert 0.05 < fc < 0.5  # cut off by the run's end before the final 50%


SSL = """\
version: 1
regularizers:
  filters_groups:
    class: GroupLassoRegularizer
    reg_regims:
      module.layer1.0.conv1.weight: [0.09, Filters]
      module.layer1.1.conv1.weight: [0.09, Filters]
    threshold_criteria: Mean_Abs
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: resnet20_cifar
    dataset: cifar10
policies:
  - regularizer:
      instance_name: filters_groups
      args:
        keep_mask: True
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - extension: {instance_name: net_thinner}
    epochs: [2]
"""


def test_a_structured_sparsity_example_zeroes_and_removes_filters(tmp_path, capsys):
    """ssl_filter-removal_training.yaml's shape: group lasso whose threshold_criteria zeroes the
    filters below the strength, keep_mask, then the thinner removes them."""
    schedule = tmp_path / "ssl.yaml"
    schedule.write_text(SSL)
    out = tmp_path / "logs"
    argv = ["distiller", "digits", "-a", "resnet20_cifar", "--epochs", "3", "-b", "128",
            "--lr", "0.05", "--seed", "0", "--compress", str(schedule), "-o", str(out), "-q",
            "--on-collapse", "warn"]  # fmt: skip
    assert main(argv) == 0
    model, _spec = load_model(only_run(out))
    for i in (0, 1):
        kept = model.layer1[i].conv1.out_channels
        assert 0 < kept < 16, kept  # some filters were below the threshold, and are gone
        assert model.layer1[i].conv2.in_channels == kept


def test_dry_run_resolves_what_the_run_names(tmp_path, capsys, teacher_run):
    """A schedule written for another network, or a teacher file that is not there, stops the
    dry run as it would stop the run: before anything is trained."""
    schedule = tmp_path / "thin.yaml"
    schedule.write_text(THINNING)
    common = ["--epochs", "2", "--dry-run", "-o", str(tmp_path / "logs")]
    assert main(["distiller", "digits", "-a", "resnet20_cifar", "--compress", str(schedule),
                 *common]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "student: resnet20_cifar" in printed and "every layer name resolves" in printed
    assert main(["distiller", "digits", "-a", "lenet5", "--compress", str(schedule),
                 *common]) == 1  # fmt: skip
    assert "'layer2.0.conv1' matches no Conv2d/Linear module" in capsys.readouterr().err
    missing = tmp_path / "teacher.pth.tar"
    assert main(["distiller", "digits", "-a", "mlp", "--kd-teacher", "lenet5", "--kd-resume",
                 str(missing), *common]) == 1  # fmt: skip
    assert str(missing) in capsys.readouterr().err
    assert main(["distiller", "digits", "-a", "mlp", "--kd-teacher", "mlp", "--kd-resume",
                 str(teacher_run.run_dir), *common]) == 1  # fmt: skip
    assert "holds a 'lenet5' model but 'mlp' was asked for" in capsys.readouterr().err
    assert main(["distiller", "digits", "-a", "mlp", "--kd-teacher", "lenet5", "--kd-resume",
                 str(teacher_run.run_dir), *common]) == 0  # fmt: skip
    assert f"kd.teachers[0]: lenet5 from {teacher_run.run_dir}" in capsys.readouterr().out
    assert not (tmp_path / "logs").exists()
