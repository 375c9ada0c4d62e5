"""Distiller's flags and YAML schedules translated into kdistill configs (torch-free)."""

import pytest
import yaml

from kdistill.config import from_dict
from kdistill.config.schema import RunConfig
from kdistill.engine.schedule import build_lr_factor
from kdistill.interop.distiller import (
    DistillerError,
    infer_dataset,
    map_arch,
    parameter_to_module,
    translate_flags,
)


def translate(tmp_path, schedule=None, **flags):
    path = None
    if schedule is not None:
        path = tmp_path / "schedule.yaml"
        path.write_text(
            yaml.safe_dump(schedule, sort_keys=False) if isinstance(schedule, dict) else schedule
        )
    result = translate_flags({"data": "digits", "arch": "lenet5", **flags}, path and str(path))
    return result, from_dict(RunConfig, result.config)  # every translation is a valid config


def test_distillers_defaults_not_kdistills(tmp_path):
    result, cfg = translate(tmp_path, kd_teacher="resnet20_cifar", kd_resume="t.pth.tar")
    assert cfg.train.epochs == 90 and cfg.data.batch_size == 256 and cfg.data.val_fraction == 0.1
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.optim.name == "sgd" and not cfg.optim.nesterov
    assert cfg.schedule.name == "constant" and cfg.out_dir == "logs"
    # 0.5 CE + 0.5 * T^2 * KL at T = 1, as Distiller's --kd-teacher X --kd-resume Y alone
    kd = cfg.kd
    assert (kd.temperature, kd.alpha, kd.beta, kd.teacher_weight, kd.start_epoch) == (
        1.0, 0.5, 0.5, 0.0, 0
    )  # fmt: skip
    assert kd.teachers[0].arch == "resnet20_cifar" and kd.teachers[0].checkpoint == "t.pth.tar"
    assert any("random seed" in n for n in result.notes) and cfg.train.seed == 0


def test_a_student_weight_alone_keeps_the_distill_weight(tmp_path):
    # `--kd-sw 2` alone runs in Distiller: 2 CE + 0.5 KL (kdistill's own flags would pair
    # beta = 1 - alpha, which refuses alpha = 2)
    _, cfg = translate(tmp_path, kd_teacher="lenet5", kd_resume="t.pt", kd_student_wt=2.0)
    assert (cfg.kd.alpha, cfg.kd.resolved_beta) == (2.0, 0.5)


def test_every_flag_lands_on_its_key(tmp_path):
    result, cfg = translate(
        tmp_path, lr=0.2, momentum=0.8, weight_decay=5e-4, batch_size=32, epochs=7,
        validation_split=0.2, seed=3, deterministic=True, cpu=True, out_dir="out", name="exp",
        resume_from="w.pth.tar", kd_teacher="resnet56_cifar", kd_resume="t.pth",
        kd_temperature=4.0, kd_distill_wt=0.7, kd_student_wt=0.3, kd_teacher_wt=0.0,
        kd_start_epoch=2, workers=8, print_freq=50,
    )  # fmt: skip
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.2, 0.8, 5e-4)
    assert (cfg.data.batch_size, cfg.train.epochs, cfg.data.val_fraction) == (32, 7, 0.2)
    assert (cfg.train.seed, cfg.train.deterministic, cfg.train.device) == (3, True, "cpu")
    assert (cfg.out_dir, cfg.name, cfg.model.checkpoint) == ("out", "exp", "w.pth.tar")
    assert (cfg.kd.temperature, cfg.kd.beta, cfg.kd.alpha, cfg.kd.start_epoch) == (4, 0.7, 0.3, 2)
    notes = "\n".join(result.notes)
    assert "--workers 8 ignored" in notes and "--print-freq 50 ignored" in notes
    assert "--resume-from" in notes


def test_gpus(tmp_path):
    _, cfg = translate(tmp_path, gpus="1")
    assert cfg.train.device == "cuda:1"
    result, cfg = translate(tmp_path, gpus="0,1")
    assert cfg.train.device == "cuda:0" and any("--nproc 2" in n for n in result.notes)
    with pytest.raises(DistillerError, match="--gpus 'x'"):
        translate(tmp_path, gpus="x")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"kd_resume": "t.pt"}, "--kd-resume needs --kd-teacher"),
        ({"kd_teacher": "resnet20_cifar", "kd_pretrained": True}, "never downloads"),
        ({"pretrained": True}, "--exp-load-weights-from"),
        ({"arch": "resnet20_cifar_earlyexit"}, "no counterpart of this Distiller model"),
        ({"arch": "simplenet_mnist"}, "no counterpart"),
        ({"data": "/nonexistent/cifar"}, "does not exist"),
    ],
)
def test_refusals_name_the_flag(tmp_path, flags, message):
    with pytest.raises(DistillerError, match=message):
        translate(tmp_path, **flags)


def test_kd_pretrained_with_a_local_file_is_noted(tmp_path):
    result, _ = translate(tmp_path, kd_teacher="lenet5", kd_resume="t.pt", kd_pretrained=True)
    assert any("--kd-pretrained ignored" in n for n in result.notes)


def test_architecture_names():
    assert map_arch("ResNet20_CIFAR") == "resnet20_cifar"
    assert map_arch("preact_resnet110_cifar") == "preact_resnet110_cifar"
    assert map_arch("resnet18") == "resnet18"
    assert map_arch("vgg16") == "torchvision:vgg16"
    assert map_arch("mypkg.nets:small") == "mypkg.nets:small"
    # Distiller's own simple models are in kdistill's registry under their Distiller names
    for name in ("mobilenet_050", "preact_resnet18", "plain20_cifar", "vgg16_cifar", "alexnet_bn"):
        assert map_arch(name) == name
    for name in ("resnet1202_cifar", "simplenet_cifar", "resnet20_cifar_earlyexit"):
        with pytest.raises(DistillerError, match="Supported"):
            map_arch(name)
    assert parameter_to_module("module.layer1.0.conv1.weight") == "layer1.0.conv1"
    assert parameter_to_module("fc.weight") == "fc"
    assert parameter_to_module("features.module.0.weight") == "features.0"  # Distiller's VGG


def test_the_dataset_is_inferred_from_the_directory(tmp_path):
    cifar10 = tmp_path / "c10" / "cifar-10-batches-py"
    cifar10.mkdir(parents=True)
    cifar100 = tmp_path / "c100" / "cifar-100-python"
    cifar100.mkdir(parents=True)
    mnist = tmp_path / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    imagenet = tmp_path / "imagenet" / "train"
    imagenet.mkdir(parents=True)
    assert infer_dataset(str(tmp_path / "c10"), "resnet20_cifar")["name"] == "cifar10"
    assert infer_dataset(str(tmp_path / "c10"), "resnet20_cifar")["augment"] == {
        "crop_padding": 4, "hflip": True
    }  # fmt: skip
    assert infer_dataset(str(tmp_path / "c100"), "resnet20_cifar")["name"] == "cifar100"
    assert infer_dataset(str(tmp_path / "mnist"), "lenet5")["name"] == "mnist"
    net = infer_dataset(str(tmp_path / "imagenet"), "resnet18")
    assert (net["name"], net["image_size"]) == ("imagefolder", 224)
    with pytest.raises(DistillerError, match="is a CIFAR model .* holds imagefolder"):
        infer_dataset(str(tmp_path / "imagenet"), "resnet20_cifar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillerError, match="no dataset found"):
        infer_dataset(str(tmp_path / "empty"), "resnet18")


AGP = """
version: 1
pruners:
  filters:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.1
    final_sparsity: 0.5
    group_type: Filters
    weights: [module.features.0.weight]
  fine:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.8
    weights: [module.classifier.1.weight, module.classifier.3.weight]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: lenet5
    dataset: digits
policies:
  - pruner: {instance_name: filters}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 2
  - pruner: {instance_name: fine}
    starting_epoch: 1
    ending_epoch: 6
  - extension: {instance_name: net_thinner}
    epochs: [9]
"""


def test_agp_pruners_and_thinning(tmp_path):
    _, cfg = translate(tmp_path, AGP, epochs=12)
    structured, fine, thinning = cfg.policies
    # Distiller's AGP reaches the final sparsity at start + ((end - start - 1) // f) * f = 8,
    # which is the last epoch of kdistill's window [0, 9)
    assert (structured.starting_epoch, structured.ending_epoch, structured.frequency) == (0, 9, 2)
    assert (structured.structure, structured.scope, structured.remove_epoch) == (
        "filters", "per_layer", None
    )  # fmt: skip
    # Distiller's thinner removes every convolution's zeroed filters at its epoch
    assert (thinning.kind, thinning.structure, thinning.epochs, thinning.modules) == (
        "thinning", "filters", (9,), ()
    )  # fmt: skip
    assert (structured.initial_sparsity, structured.target_sparsity) == (0.1, 0.5)
    assert structured.modules == ("features.0",)
    assert fine.structure == "elements" and fine.modules == ("classifier.1", "classifier.3")
    assert (fine.starting_epoch, fine.ending_epoch, fine.frequency) == (1, 6, 1)


def test_level_pruner_and_regularizers(tmp_path):
    schedule = {
        "version": 1,
        "pruners": {"levels": {"class": "SparsityLevelParameterPruner", "levels": {
            "module.features.0.weight": 0.3, "module.features.3.weight": 0.6,
            "module.classifier.1.weight": 0.6}}},
        "regularizers": {
            "l1": {"class": "L1Regularizer", "reg_regims": {"module.classifier.3.weight": 1e-4}},
            "lasso": {"class": "GroupLassoRegularizer", "threshold_criteria": "Mean_Abs",
                      "reg_regims": {"module.features.3.weight": [0.002, "Channels"],
                                     "module.features.0.weight": [0.001, "Filters"]}},
        },
        "policies": [
            {"pruner": {"instance_name": "levels"}, "epochs": [0]},
            {"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 3},
            {"regularizer": {"instance_name": "lasso", "args": {"keep_mask": True}},
             "starting_epoch": 1, "ending_epoch": 20},
        ],
    }  # fmt: skip
    result, cfg = translate(tmp_path, schedule, epochs=5)
    pruning = [p for p in cfg.policies if p.kind == "pruning"]
    assert {(p.target_sparsity, p.modules, p.schedule) for p in pruning} == {
        (0.3, ("features.0",), "one_shot"), (0.6, ("features.3", "classifier.1"), "one_shot")
    }  # fmt: skip
    regs = [p for p in cfg.policies if p.kind == "regularization"]
    assert [(r.type, r.weight, r.modules, r.groups, r.ending_epoch) for r in regs] == [
        ("l1", 1e-4, ("classifier.3",), "filters", 3),
        ("group_lasso", 0.002, ("features.3",), "channels", None),
        ("group_lasso", 0.001, ("features.0",), "filters", None),
    ]
    # threshold_criteria: the groups at or below the strength are zeroed after every step, and
    # keep_mask keeps the last step's zeros
    assert [(r.threshold, r.threshold_criteria, r.keep_mask) for r in regs] == [
        (None, "mean_abs", False), (0.002, "mean_abs", True), (0.001, "mean_abs", True)
    ]  # fmt: skip
    assert not any("threshold_criteria" in n for n in result.notes)


def test_quantization_aware_training(tmp_path):
    schedule = {
        "quantizers": {"q": {
            "class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
            "bits_weights": 4, "mode": {"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
            "per_channel_wts": True, "ema_decay": 0.999,
            "overrides": {"features.0": {"bits_weights": None, "bits_activations": None},
                          "classifier.*": {"bits_weights": 8, "bits_activations": 8}}}},
        "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 2,
                      "ending_epoch": 200, "frequency": 1}],
    }  # fmt: skip
    result, cfg = translate(tmp_path, schedule, epochs=4)
    (q,) = cfg.policies
    assert (q.starting_epoch, q.weight_bits, q.activation_bits) == (2, 4, 8)
    assert not q.activation_symmetric and q.weight_per_channel
    assert q.overrides == {
        "features.0": None,
        "re:classifier.*": {"weight_bits": 8, "activation_bits": 8},
    }
    assert any("ema_decay" in n for n in result.notes)


def test_the_old_spelling_of_the_quantizer_class_is_an_alias(tmp_path):
    schedule = {
        "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantization",
                             "bits_activations": 8, "bits_weights": 4}},
        "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0,
                      "ending_epoch": 300, "frequency": 1}],
    }  # fmt: skip
    result, cfg = translate(tmp_path, schedule, epochs=2)
    assert cfg.policies[0].weight_bits == 4
    assert any("read as Distiller's QuantAwareTrainRangeLinearQuantizer" in n for n in result.notes)


@pytest.mark.parametrize(
    ("cls", "settings", "policy", "expected"),
    [
        ("StepLR", {"step_size": 2, "gamma": 0.5}, {},
         {"name": "multistep", "milestones": (2, 4), "gamma": 0.5}),
        ("MultiStepLR", {"milestones": [3], "gamma": 0.2}, {},
         {"name": "multistep", "milestones": (3,), "gamma": 0.2}),
        ("ExponentialLR", {"gamma": 0.9}, {}, {"name": "exponential", "gamma": 0.9}),
        # stepped only until epoch 2: the lr then stays at 0.9^3
        ("ExponentialLR", {"gamma": 0.9}, {"ending_epoch": 3},
         {"name": "multistep", "milestones": (1, 2, 3), "gamma": 0.9}),
        ("MultiStepMultiGammaLR", {"milestones": [2, 4], "gammas": [0.5, 0.1]}, {},
         {"name": "multistep", "milestones": (2, 4), "gammas": (0.5, 0.1)}),
    ],
)  # fmt: skip
def test_lr_schedulers(tmp_path, cls, settings, policy, expected):
    schedule = {
        "lr_schedulers": {"lr": {"class": cls, **settings}},
        "policies": [{"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0,
                      "ending_epoch": 6, "frequency": 1, **policy}],
    }  # fmt: skip
    _, cfg = translate(tmp_path, schedule, epochs=6)
    for key, value in expected.items():
        assert getattr(cfg.schedule, key) == pytest.approx(value), key


def test_lr_factors_follow_distillers_epochs(tmp_path):
    schedule = {
        "lr_schedulers": {"lr": {"class": "StepLR", "step_size": 2, "gamma": 0.1}},
        "policies": [{"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0,
                      "ending_epoch": 6}],
    }  # fmt: skip
    _, cfg = translate(tmp_path, schedule, epochs=6)
    factor = build_lr_factor(cfg.schedule, steps_per_epoch=10, epochs=6)
    got = [factor(10 * e) for e in range(6)]
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"pruners": {"p": {"class": "BernoulliFilterPruner_AGP", "group_type": "Filters"}},
          "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]},
         "BernoulliFilterPruner_AGP is not supported; supported: AutomatedGradualPruner"),
        ({"quantizers": {"q": {"class": "DorefaQuantizer", "bits_weights": 4}},
          "policies": [{"quantizer": {"instance_name": "q"}, "epochs": [0]}]},
         "DoReFa .* not implemented"),
        ({"quantizers": {"q": {"class": "PACTQuantizer"}},
          "policies": [{"quantizer": {"instance_name": "q"}, "epochs": [0]}]},
         "PACT"),
        ({"quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer",
                               "bits_weights": 16, "bits_activations": 8}},
          "policies": [{"quantizer": {"instance_name": "q"}, "epochs": [0]}]},
         "16 bits; kdistill trains 2..8-bit"),
        ({"pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                            "final_sparsity": 0.5, "weights": ["a.weight"]}},
          "policies": [{"pruner": {"instance_name": "x"}, "epochs": [0]}]},
         "refers to pruner 'x', which pruners does not define"),
        ({"pruners": {"p": {"class": "L1RankedStructureParameterPruner_AGP", "group_type": "Blocks",
                            "initial_sparsity": 0.1, "final_sparsity": 0.5, "weights": ["a"]}},
          "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0,
                        "ending_epoch": 4}]},
         "group_type 'Blocks' is not supported"),
        ({"pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                            "final_sparsity": 0.5, "weights": ["a"], "leader": "b"}},
          "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0,
                        "ending_epoch": 4}]},
         "setting\\(s\\) leader are not supported"),
        ({"lr_schedulers": {"a": {"class": "CosineAnnealingLR", "T_max": 5}},
          "policies": [{"lr_scheduler": {"instance_name": "a"}, "epochs": [0]}]},
         "CosineAnnealingLR is not supported; supported: StepLR"),
        ({"extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_rows"}},
          "policies": [{"extension": {"instance_name": "t"}, "epochs": [3]}]},
         "thinning_func_str 'remove_rows'; Distiller's thinning functions are remove_filters"),
        ({"regularizers": {"r": {"class": "GroupLassoRegularizer", "threshold_criteria": "L2",
                                 "reg_regims": {"a.weight": [0.1, "Filters"]}}},
          "policies": [{"regularizer": {"instance_name": "r"}, "epochs": [0]}]},
         "threshold_criteria 'L2'"),
        ({"policies": [{"pruner": {"instance_name": "p"}, "epochs": [0], "when": 1}],
          "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"a": 0.5}}}},
         "unknown key\\(s\\) when"),
        ({"extras": {}}, "unknown section\\(s\\) extras"),
        ({"regularizers": {"r": {"class": "GroupLassoRegularizer",
                                 "reg_regims": {"a.weight": [0.1, "3D"]}}},
          "policies": [{"regularizer": {"instance_name": "r"}, "epochs": [0]}]},
         "group type '3D' is not supported"),
    ],
)  # fmt: skip
def test_unsupported_schedules_are_errors(tmp_path, schedule, message):
    with pytest.raises(DistillerError, match=message):
        translate(tmp_path, schedule, epochs=5)


def test_kd_weights_without_a_teacher_are_noted(tmp_path):
    result, cfg = translate(tmp_path, kd_temperature=4.0)
    assert cfg.kd is None
    assert any("--kd-temperature ignored: distillation is on only with --kd-teacher" in n
               for n in result.notes)  # fmt: skip


def test_penalties_are_scaled_as_distillers_loss_nests_them(tmp_path):
    schedule = {
        "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"fc.weight": 0.001}}},
        "policies": [{"regularizer": {"instance_name": "l1"}, "starting_epoch": 0,
                      "ending_epoch": 6}],
    }  # fmt: skip
    # Distiller: (CE + R) before --kd-start-epoch, sw * (CE + R) + dw * KL from it on
    result, cfg = translate(tmp_path, schedule, epochs=6, kd_teacher="lenet5", kd_resume="t.pt",
                            kd_student_wt=0.4, kd_start_epoch=2)  # fmt: skip
    windows = [(p.starting_epoch, p.ending_epoch, p.weight) for p in cfg.policies]
    assert windows == [(0, 2, 0.001), (2, None, pytest.approx(0.0004))]
    assert any("multiplied by --kd-sw 0.4" in n for n in result.notes)
    _, cfg = translate(tmp_path, schedule, epochs=6)  # no distillation: as written
    assert [p.weight for p in cfg.policies] == [0.001]


def test_magnitude_and_sensitivity_pruners(tmp_path):
    schedule = {
        "pruners": {
            "magnitude": {"class": "MagnitudeParameterPruner",
                          "thresholds": {"module.features.0.weight": 0.02, "*": 0.05}},
            "sensitivity": {"class": "SensitivityPruner",
                            "sensitivities": {"module.classifier.5.weight": 0.4}},
        },
        "policies": [
            {"pruner": {"instance_name": "magnitude"}, "epochs": [0, 2, 4]},
            {"pruner": {"instance_name": "sensitivity"}, "starting_epoch": 1, "ending_epoch": 9},
        ],
    }  # fmt: skip
    result, cfg = translate(tmp_path, schedule, epochs=6)
    got = [(p.threshold, p.threshold_in_std, p.modules, p.starting_epoch, p.ending_epoch,
            p.frequency) for p in cfg.policies]  # fmt: skip
    assert got == [
        (0.02, False, ("features.0",), 0, 5, 2),
        (0.05, False, ("re:(?!(?:features\\.0)$).*",), 0, 5, 2),  # '*': the layers not named
        (0.4, True, ("classifier.5",), 1, None, 1),
    ]
    assert all(p.schedule == "threshold" for p in cfg.policies)
    assert any("'*' covers the Conv2d and Linear weights not named" in n for n in result.notes)


def test_one_name_for_two_instances_is_an_error(tmp_path):
    schedule = {
        "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"fc.weight": 0.5}}},
        "regularizers": {"p": {"class": "L1Regularizer", "reg_regims": {"fc.weight": 0.1}}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}],
    }
    with pytest.raises(DistillerError, match="'p' is defined in pruners and in regularizers"):
        translate(tmp_path, schedule, epochs=5)
