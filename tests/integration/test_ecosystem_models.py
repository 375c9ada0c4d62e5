"""Models from outside the registry: torchvision's by name, and any builder by import path
whatever its signature, adapted to the data (first convolution, classifier head)."""

import pytest
import torch
from torch import nn

from kdistill.experiment import load_model, run
from kdistill.models import build_model

from .conftest import digits_config


def imagenet_style_builder(width=8):
    """A builder with its own signature: 3-channel input, 1000 classes."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 1000),
    )  # fmt: skip


def test_a_torchvision_model_by_name_trains_and_reloads(tmp_path):
    messages = []
    cfg = digits_config(
        tmp_path, "model.arch=torchvision:resnet18", "model.args={}", "train.epochs=1"
    )
    result = run(cfg, progress=False, log=messages.append)
    assert any("replaced conv1 (Conv2d 3 -> 1 input channels)" in m for m in messages), messages
    loaded = load_model(result.run_dir)  # not an import path: a file may name it
    assert loaded.spec.arch == "torchvision:resnet18"
    assert loaded.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_an_import_path_builder_with_its_own_signature_is_adapted():
    arch = f"{__name__}:imagenet_style_builder"
    model = build_model(arch, 10, (1, 8, 8), {"width": 4})
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model.kdistill_adapted == (
        "replaced 0 (Conv2d 3 -> 1 input channels)",
        "replaced 4 (Linear 1000 -> 10 classes)",
    )
    model = build_model("torchvision.models:mobilenet_v3_small", 10, (1, 32, 32))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)  # torchvision's **kwargs builder


def test_unknown_torchvision_names_get_suggestions():
    with pytest.raises(
        ValueError, match=r"no classification model 'resnet19'.*did you mean resnet18"
    ):
        build_model("torchvision:resnet19", 10, (1, 8, 8))


def tiny_hf_classifier(directory, num_labels=10, num_channels=1):
    """A small Hugging Face ResNet classifier with random weights, saved locally."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        num_labels=num_labels, downsample_in_first_stage=False,
    )  # fmt: skip
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(directory)
    return directory


def test_a_timm_teacher_teaches_a_torchvision_student(tmp_path):
    """Distillation across families: timm's ResNet as the teacher, torchvision's MobileNet as
    the student; both built untrained by name, nothing downloaded."""
    teacher = run(
        digits_config(tmp_path, "name=timm-teacher", "model.arch=timm:resnet10t", "model.args={}",
                      "train.epochs=3"),
        progress=False, log=lambda _: None,
    )  # fmt: skip
    assert load_model(teacher.run_dir).spec.arch == "timm:resnet10t"  # a file may name it
    said = []
    student = run(
        digits_config(
            tmp_path, "name=tv-student", "model.arch=torchvision:mobilenet_v3_small",
            "model.args={}", "train.epochs=1", "train.on_collapse=warn",
            f"kd.teachers=[{{checkpoint: {teacher.run_dir}}}]",
        ),
        progress=False, log=said.append,
    )  # fmt: skip
    assert student.record.teachers[0].arch == "timm:resnet10t"
    assert "loss_distill" in (student.run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="timm has no model 'resnet10x'.*did you mean"):
        build_model("timm:resnet10x", 10, (1, 8, 8))


def test_a_hugging_face_classifier_from_a_local_directory(tmp_path):
    hf_dir = tiny_hf_classifier(tmp_path / "hf-resnet")
    model = build_model(f"hf:{hf_dir}", 10, (1, 8, 8))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model.kdistill_adapted == ()
    # another number of classes and channels: the layers they size are replaced, and said
    model = build_model(f"hf:{hf_dir}", 4, (3, 8, 8))
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    assert model.kdistill_adapted == (
        "classes 10 -> 4 (the layers it sizes are new)",
        "input channels 1 -> 3 (the layers it sizes are new)",
    )
    # as a teacher from its own directory (its weights), distilling into kdistill's MLP
    result = run(
        digits_config(tmp_path, f"kd.teachers=[{{arch: 'hf:{hf_dir}', checkpoint: "
                      f"{hf_dir / 'model.safetensors'}}}]", "kd.min_teacher_top1=0",
                      "train.epochs=1", "train.on_collapse=warn"),
        progress=False, log=lambda _: None,
    )  # fmt: skip
    assert result.record.teachers[0].arch == f"hf:{hf_dir}"
    with pytest.raises(ValueError, match="no config.json there"):
        build_model(f"hf:{tmp_path / 'nowhere'}", 10, (1, 8, 8))


@pytest.mark.parametrize(
    ("module", "arch", "extra"),
    [("timm", "timm:resnet10t", "timm"), ("transformers", "hf:x", "hf")],
)
def test_missing_extras_name_the_install(monkeypatch, module, arch, extra):
    import sys

    from kdistill.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    with pytest.raises(MissingExtraError, match=rf"pip install 'kdistill\[{extra}\]'"):
        build_model(arch, 10, (1, 8, 8))


def test_a_hugging_face_teacher_keeps_its_image_processors_size_and_normalization(tmp_path):
    import json

    from kdistill.config import RunConfig, apply_overrides
    from kdistill.experiment import build_run
    from kdistill.teachers import Renormalize, Resize

    hf_dir = tiny_hf_classifier(tmp_path / "hf-resnet")
    (hf_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "do_normalize": True,
        "image_mean": [0.5], "image_std": [0.25], "size": {"height": 16, "width": 16},
    }))  # fmt: skip
    said = []
    cfg = apply_overrides(RunConfig(), [
        f"out_dir={tmp_path}", "kd.min_teacher_top1=0",
        f"kd.teachers=[{{arch: 'hf:{hf_dir}', checkpoint: {hf_dir / 'model.safetensors'}}}]",
    ])  # fmt: skip
    parts = build_run(cfg, log=said.append)
    transform = parts.teacher.members[0].input_transform
    renorm, resize = transform  # digits standardized for the student, then the teacher's own
    assert isinstance(renorm, Renormalize) and isinstance(resize, Resize)
    assert resize(torch.zeros(2, 1, 8, 8)).shape == (2, 1, 16, 16)
    assert any("inputs as its image processor asks" in line for line in said)
    # the config's own values win over the image processor's
    cfg = apply_overrides(cfg, ["kd.teachers.0.input_size=12"])
    transform = build_run(cfg, log=lambda _: None).teacher.members[0].input_transform
    assert transform(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 12, 12)


@pytest.mark.parametrize(
    ("processor", "mean", "std", "size"),
    [
        # image_mean without image_std: transformers' default std for the processor class
        ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.25, 0.25, 0.25],
          "size": 12}, (0.25, 0.25, 0.25), (0.5, 0.5, 0.5), 12),
        # a plain-integer size, the format older processors saved
        ({"feature_extractor_type": "ViTFeatureExtractor", "image_mean": [0.4],
          "image_std": [0.2], "size": 12}, (0.4,), (0.2,), 12),
    ],
)  # fmt: skip
def test_every_image_processor_format_transformers_reads(tmp_path, processor, mean, std, size):
    import json

    from kdistill.config import ModelConfig
    from kdistill.experiment.teachers import hugging_face_input

    hf_dir = tiny_hf_classifier(tmp_path / "hf")
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(processor))
    t = hugging_face_input(ModelConfig(arch=f"hf:{hf_dir}"), lambda _: None, "kd.teachers[0]")
    assert (t.input_mean, t.input_std, t.input_size) == (mean, std, size)
