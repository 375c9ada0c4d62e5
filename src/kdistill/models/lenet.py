"""LeNet-5 (LeCun et al. 1998) in its common modern form: ReLU and max-pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeNet5(nn.Module):
    """``conv5(6) - pool - conv5(16) - pool - fc120 - fc84 - fc``.

    The first convolution is padded by 2, so 28x28 inputs behave like the original 32x32 ones.
    For inputs too small for an unpadded second convolution (e.g. 8x8 digits) it is padded too.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if input_size < 4:
            raise ValueError(f"lenet5 needs inputs of at least 4x4 pixels, got {input_size}")
        after_pool = input_size // 2
        pad2 = 0 if after_pool >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_lenet5(num_classes: int, in_channels: int, input_size: int | None) -> LeNet5:
    """LeNet-5 for ``input_size`` x ``input_size`` images."""
    if input_size is None:
        raise ValueError("lenet5 needs image inputs (N, C, H, W), not flat vectors")
    return LeNet5(num_classes, in_channels, input_size)
