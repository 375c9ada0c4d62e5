"""Compression with distillation in one schedule, end to end on the digits."""

import json

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config import ConfigError
from kdistill.experiment import load_model, run
from kdistill.models import load_state_file

from .conftest import digits_config
from .test_engine import QUIET, StopAt, metric_lines

# A few epochs of LeNet-5 on the digits test the mechanics of compression; the student often
# ends near chance that soon, which the collapse check would (rightly) stop, so it only warns.
LENET = [
    "model.arch=lenet5",
    "model.args={}",
    "data.augment.crop_padding=1",
    "train.on_collapse=warn",
]


def policies(*items):
    return "policies=[" + ", ".join(items) + "]"


def test_qat_with_distillation_converts_to_int8(tmp_path, teacher_run, capsys):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=4", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies("{kind: quantization, starting_epoch: 1, weight_bits: 4, activation_bits: 8, overrides: {features.0: null, classifier.5: null}}"),
    )  # fmt: skip
    result = run(cfg, **QUIET)
    q = result.summary["compression"]["quantization"]
    assert q["layers"] == {
        "features.0": "fp32",
        "features.3": "w4a8",
        "classifier.1": "w4a8",
        "classifier.3": "w4a8",
        "classifier.5": "fp32",
    }
    assert q["fake_quant_test_top1"] == pytest.approx(result.summary["test_top1"])
    assert abs(q["int8_test_top1"] - q["fake_quant_test_top1"]) <= 0.015  # 5 of 359 images
    assert q["packed_weight_bytes"] < result.summary["params"] * 4
    assert set(q["int8_cpu_latency_ms"]) == {"batch_1", "batch_128"}
    # the model file rebuilds the fake-quantized graph; the ONNX file runs without torch code
    _model, spec = load_model(result.run_dir)
    assert "qat" in spec.extra
    assert main(["eval", str(result.run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(result.summary["test_top1"])
    assert main(["eval", q["onnx_path"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(q["int8_test_top1"])


def test_mlp_qat_path(tmp_path):
    cfg = digits_config(
        tmp_path,
        "train.epochs=2",
        policies("{kind: quantization, weight_bits: 2, activation_bits: 4}"),
    )
    q = run(cfg, **QUIET).summary["compression"]["quantization"]
    assert set(q["layers"].values()) == {"w2a4"} and q["int8_test_top1"] > 0.3
    assert abs(q["int8_test_top1"] - q["fake_quant_test_top1"]) <= 0.015


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_agp_reaches_its_target_exactly(tmp_path, scope):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=5",
        policies(f"{{kind: pruning, target_sparsity: 0.8, scope: {scope}, starting_epoch: 0, ending_epoch: 3}}"),
    )  # fmt: skip
    result = run(cfg, **QUIET)
    report = result.summary["compression"]["pruning"]
    assert report["pruned_weights_sparsity"] == pytest.approx(0.8, abs=1e-4)
    if scope == "per_layer":
        assert all(s == pytest.approx(0.8, abs=0.01) for s in report["layers"].values())
    weights = load_state_file(result.run_dir)
    zeros = sum(int((weights[f"{n}"] == 0).sum()) for n in report["layers"])
    total = sum(weights[n].numel() for n in report["layers"])
    assert zeros / total == pytest.approx(0.8, abs=1e-4)  # permanent in the saved weights
    assert result.summary["compression"]["size_gzip_bytes"] < result.summary["size_bytes"]


def test_one_shot_pruning_with_distillation_and_group_lasso(tmp_path, teacher_run):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=3", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies(
            "{kind: distillation, starting_epoch: 1}",
            "{kind: pruning, schedule: one_shot, target_sparsity: 0.5, starting_epoch: 1, modules: ['re:classifier\\..*']}",
            "{kind: regularization, type: group_lasso, weight: 0.001, ending_epoch: 2}",
        ),
    )  # fmt: skip
    result = run(cfg, **QUIET)
    layers = result.summary["compression"]["pruning"]["layers"]
    assert set(layers) == {"classifier.1.weight", "classifier.3.weight", "classifier.5.weight"}
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert (
        "loss_reg_group_lasso" in rows[0]["train"]
        and "loss_reg_group_lasso" not in rows[2]["train"]
    )
    assert "loss_distill" not in rows[0]["train"] and "loss_distill" in rows[1]["train"]


def test_channel_pruning_taught_by_the_unpruned_self(tmp_path, teacher_run, capsys):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=3", f"model.checkpoint={teacher_run.run_dir}",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies("{kind: channel_pruning, ratio: 0.5, starting_epoch: 0, iterative_steps: 2}"),
    )  # fmt: skip
    result = run(cfg, **QUIET)
    c = result.summary["compression"]["channel_pruning"]
    assert c["steps"] == 2 and c["params_after"] < 0.5 * c["params_before"]
    assert (
        result.summary["params"] == c["params_after"]
        and result.summary["macs"] < teacher_run.summary["macs"]
    )
    model, _spec = load_model(result.run_dir)  # reloads into the pruned shapes, no pickle
    assert sum(p.numel() for p in model.parameters()) == c["params_after"]
    assert main(["eval", str(result.run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(result.summary["test_top1"])


def test_resume_mid_schedule_equals_uninterrupted(tmp_path, teacher_run):
    extra = [
        *LENET, "train.epochs=5", "train.deterministic=true", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies(
            "{kind: channel_pruning, ratio: 0.25, starting_epoch: 0}",
            "{kind: quantization, starting_epoch: 1, weight_bits: 4, overrides: {features.0: null}, convert: false}",
            "{kind: pruning, target_sparsity: 0.6, starting_epoch: 1, ending_epoch: 4}",
        ),
    ]  # fmt: skip
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(3)], **QUIET)
    resumed = run(cfg, resume=True, **QUIET)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    a, b = load_state_file(whole.run_dir), load_state_file(resumed.run_dir)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["compression"]["pruning"]["pruned_weights_sparsity"] == pytest.approx(
        0.6, abs=1e-4
    )


def test_resume_after_structured_removal_equals_uninterrupted(tmp_path, teacher_run):
    extra = [
        *LENET, "train.epochs=4", "train.deterministic=true", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies(
            "{kind: pruning, structure: filters, scope: per_layer, target_sparsity: 0.5, modules: [features.3], starting_epoch: 0, ending_epoch: 2, remove_epoch: 2}",
            # masks the layer whose inputs the removal cuts, before and after it
            "{kind: pruning, initial_sparsity: 0.2, target_sparsity: 0.5, modules: [classifier.1], starting_epoch: 1, ending_epoch: 4}",
        ),
    ]  # fmt: skip
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(3)], **QUIET)  # after the filters were removed
    resumed = run(cfg, resume=True, **QUIET)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    a, b = load_state_file(whole.run_dir), load_state_file(resumed.run_dir)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    model, _spec = load_model(resumed.run_dir)
    assert model.features[3].out_channels == 8 and model.classifier[1].in_features == 8 * 2 * 2
    layers = resumed.summary["compression"]["pruning"]["layers"]
    assert layers["classifier.1.weight"] == pytest.approx(0.5, abs=1e-3)


def test_thinning_twice_with_pruning_between_resumes_exactly(tmp_path, teacher_run):
    """Distiller's vgg19 filter-rank example in small: prune, thin, prune the thinned layer
    again, thin again; interrupted after the first thinning and resumed."""
    extra = [
        *LENET, "train.epochs=5", "train.deterministic=true", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_precision=fp32",  # not chosen by timing (under load it flips)
        policies(
            "{kind: pruning, schedule: one_shot, structure: filters, scope: per_layer, target_sparsity: 0.5, modules: [features.3], starting_epoch: 0}",
            "{kind: thinning, epochs: [1, 3]}",
            "{kind: pruning, schedule: one_shot, structure: filters, scope: per_layer, target_sparsity: 0.25, modules: [features.3], starting_epoch: 2}",
        ),
    ]  # fmt: skip
    whole = run(digits_config(tmp_path / "a", *extra), **QUIET)
    cfg = digits_config(tmp_path / "b", *extra)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(3)], **QUIET)  # after the first thinning
    resumed = run(cfg, resume=True, **QUIET)
    assert metric_lines(resumed.run_dir) == metric_lines(whole.run_dir)
    a, b = load_state_file(whole.run_dir), load_state_file(resumed.run_dir)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    model, _spec = load_model(resumed.run_dir)
    # 16 filters -> 8 (thinned at epoch 1) -> 2 of 8 zeroed at epoch 2 -> 6 (thinned at 3)
    assert model.features[3].out_channels == 6 and model.classifier[1].in_features == 6 * 2 * 2
    assert resumed.summary["compression"]["thinning"] == [
        {"structure": "filters", "epochs": [1, 3]}
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["{kind: quantization}", "{kind: quantization}"], "2 quantization policies"),
        (["{kind: pruning, target_sparsity: 1.0}"], "target_sparsity must be in"),
        (["{kind: distillation}"], "needs the kd section"),
        (
            [
                "{kind: quantization, starting_epoch: 1}",
                "{kind: channel_pruning, starting_epoch: 2}",
            ],
            "structure first",
        ),
        (["{kind: pruning, starting_epoch: 9}"], "not before train.epochs"),
        (["{kind: sparsify}"], "kind must be one of"),
        (["{kind: pruning, structure: filters}"], "set scope: per_layer"),
        (["{kind: pruning, remove_epoch: 2, ending_epoch: 2}"], "needs structure: filters"),
        (
            [
                "{kind: pruning, structure: filters, scope: per_layer, ending_epoch: 3, remove_epoch: 1}"
            ],
            "comes before the last pruning step \\(epoch 2\\)",
        ),
        (
            [
                "{kind: pruning, structure: channels, scope: per_layer, ending_epoch: 2, remove_epoch: 2}",
                "{kind: quantization, starting_epoch: 1}",
            ],
            "after quantization starts",
        ),
        (["{kind: quantization, weight_symmetric: false}"], "asymmetric weights are not supported"),
        (["{kind: thinning, epochs: [3, 1]}"], "epochs must be increasing"),
        (["{kind: thinning, epochs: [1, 9]}"], "thinning policy's epoch 9 is not before"),
        (
            ["{kind: thinning, epochs: [2]}", "{kind: quantization, starting_epoch: 1}"],
            "after quantization starts",
        ),
        (["{kind: regularization, keep_mask: true}"], "keep_mask keeps what threshold zeroed"),
        (["{kind: pruning, group_dependency: leader}"], "group_dependency leader shares"),
    ],
)
def test_bad_schedules(tmp_path, items, message):
    with pytest.raises(ConfigError, match=message):
        digits_config(tmp_path, *LENET, policies(*items))


def test_unknown_layer_names_are_reported(tmp_path):
    cfg = digits_config(tmp_path, *LENET, policies("{kind: pruning, modules: [conv9]}"))
    with pytest.raises(
        ValueError, match="'conv9' matches no Conv2d/Linear module; candidates: features.0"
    ):
        run(cfg, **QUIET)


def test_a_layer_pruned_by_two_policies_is_refused(tmp_path):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=1",
        policies("{kind: pruning, modules: [features.0]}", "{kind: pruning, modules: ['re:features\\..']}"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="features.0 pruned by two policies in the same epochs"):
        run(cfg, **QUIET)


def test_threshold_pruning_zeroes_small_weights_every_step(tmp_path):
    cfg = digits_config(
        tmp_path, *LENET, "train.epochs=3",
        policies("{kind: pruning, schedule: threshold, threshold: 0.03, scope: per_layer, modules: ['re:classifier\\..'], frequency: 1}"),
    )  # fmt: skip
    said = []
    result = run(cfg, progress=False, log=said.append)
    steps = [m for m in said if "at or below the threshold zeroed" in m]
    assert len(steps) == 3  # at the start of every epoch of the window
    shares = [float(m.split(", ")[1].split("%")[0]) for m in steps]
    assert shares == sorted(shares) and shares[0] > 5  # pruned weights stay pruned
    entry = result.summary["compression"]["pruning"]
    assert entry["threshold"] == 0.03 and entry["target_sparsity"] is None
    assert entry["pruned_weights_sparsity"] * 100 >= shares[-1] - 1e-6
    assert set(entry["layers"]) == {
        "classifier.1.weight",
        "classifier.3.weight",
        "classifier.5.weight",
    }
