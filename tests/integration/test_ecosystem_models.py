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
