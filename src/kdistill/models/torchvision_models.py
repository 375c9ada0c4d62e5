"""torchvision's ResNet-18/34/50 and MobileNetV2, adapted to any channel count and small inputs.

Weights are always randomly initialized here: kdistill never downloads anything. Load trained
weights with a checkpoint instead.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tvm


def _adapt_resnet(model: tvm.ResNet, in_channels: int, small_input: bool) -> tvm.ResNet:
    if small_input:
        # CIFAR-style stem: 3x3 stride-1 convolution, no max-pool (keeps 28x28/32x32 detail).
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def build_torchvision_resnet(
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    *,
    depth: int,
    small_input: bool = False,
) -> nn.Module:
    """torchvision ResNet-18/34/50 (random init); ``small_input=True`` uses a 3x3 stride-1 stem
    without max-pool for 28x28/32x32 images."""
    if input_size is None:
        raise ValueError("ResNets need image inputs (N, C, H, W), not flat vectors")
    factories: dict[int, Callable[..., tvm.ResNet]] = {
        18: tvm.resnet18,
        34: tvm.resnet34,
        50: tvm.resnet50,
    }
    model = factories[depth](weights=None, num_classes=num_classes)
    return _adapt_resnet(model, in_channels, small_input)


def build_mobilenet_v2(
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    small_input: bool = False,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision MobileNetV2 (random init); small_input=True makes the stem stride 1."""
    if input_size is None:
        raise ValueError("mobilenet_v2 needs image inputs (N, C, H, W), not flat vectors")
    model = tvm.mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout
    )
    stem = model.features[0][0]
    if in_channels != 3 or small_input:
        model.features[0][0] = nn.Conv2d(
            in_channels,
            stem.out_channels,
            kernel_size=3,
            stride=1 if small_input else 2,
            padding=1,
            bias=False,
        )
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model
