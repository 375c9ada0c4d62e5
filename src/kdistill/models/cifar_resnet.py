"""CIFAR ResNets (He et al. 2016): depth 6n+2 with 16/32/64 channels, and their pre-activation
variants (He et al. 2016b). These are the models of Distiller's CIFAR-10 distillation tables."""

from __future__ import annotations

from torch import Tensor, nn


def _shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class BasicBlock(nn.Module):
    """``conv-BN-ReLU-conv-BN`` plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """``BN-ReLU-conv-BN-ReLU-conv`` plus shortcut (identity mappings, He et al. 2016b)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = (
            None
            if stride == 1 and in_planes == planes
            else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem, three stages of n blocks, global pooling."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, preact: bool = False
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        # Post-activation nets normalize the stem; pre-activation nets normalize inside the first
        # block and need a final BN-ReLU after the last one instead.
        self.bn1 = None if preact else nn.BatchNorm2d(16)
        self.bn_final = nn.BatchNorm2d(64) if preact else None
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(n):
                stage.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = self.relu(self.bn_final(x))
        return self.fc(self.pool(x).flatten(1))


def build_cifar_resnet(
    num_classes: int, in_channels: int, input_size: int | None, *, depth: int, preact: bool = False
) -> CifarResNet:
    """A CIFAR ResNet of the given depth (any image size works: pooling is global)."""
    if input_size is None:
        raise ValueError("CIFAR ResNets need image inputs (N, C, H, W), not flat vectors")
    return CifarResNet(depth, num_classes, in_channels, preact)
