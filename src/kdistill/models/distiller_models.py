"""Distiller's own simple models, built with its module structure and parameter names, so that
its example schedules (which name layers) and its checkpoints (which name tensors) map onto
them: plain20 (ResNet-20 without shortcuts), VGG for CIFAR, pre-activation ResNets for ImageNet,
AlexNet with BatchNorm, and MobileNet v1.

Differences from Distiller's code, none of which changes a parameter or a result at the input
size Distiller used: the number of classes and input channels are arguments; fixed-size
average pools are adaptive (the same at 32x32 CIFAR or 224x224 ImageNet inputs, and they also
take other sizes); VGG's max pools round up (the same on the power-of-two sizes of CIFAR) so
that 28x28 and 8x8 images fit; AlexNet-BN pools its features to 6x6 adaptively (an identity at
224x224).
"""

from __future__ import annotations

import math
from functools import partial

from torch import Tensor, nn


def _kaiming_fan_out(model: nn.Module) -> None:
    """Distiller's initialization of its ResNets: N(0, sqrt(2 / (k*k*out))), BN to (1, 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


# ----------------------------------------------------------------------------- plain20


class PlainBlock(nn.Module):
    """``conv-BN-ReLU-conv-BN-ReLU`` with no shortcut (Distiller's plain_cifar BasicBlock)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class PlainCifar(nn.Module):
    """Plain-20: the ResNet-20 layout (3 stages of 3 blocks, 16/32/64 channels) without
    shortcuts, Distiller's ``plain20_cifar``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = [PlainBlock(inplanes, planes, stride)]
            stage += [PlainBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def build_plain20_cifar(num_classes: int, in_channels: int, input_size: int | None) -> nn.Module:
    return PlainCifar(num_classes, in_channels)


# ----------------------------------------------------------------------------- VGG (CIFAR)

VGG_LAYOUTS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}  # fmt: skip


class VGGCifar(nn.Module):
    """VGG with one linear classifier over 512 features (Distiller's ``vggNN_cifar``)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG_LAYOUTS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_vgg_cifar(
    num_classes: int, in_channels: int, input_size: int | None, *, depth: int
) -> nn.Module:
    return VGGCifar(depth, num_classes, in_channels)


# ----------------------------------------------------------------------------- pre-activation


class _PreactBlock(nn.Module):
    """A pre-activation block: ``pre_bn`` and ``pre_relu`` (absent in a stage's first block,
    whose input the stem has normalized) before the body, whose output is added to the input or
    to the ``downsample`` projection of the pre-activated input."""

    expansion = 1

    def __init__(self, inplanes: int, preactivate: bool) -> None:
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes) if preactivate else None
        self.pre_relu = nn.ReLU(inplace=True) if preactivate else None

    def body(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        pre = x if self.pre_bn is None else self.pre_relu(self.pre_bn(x))  # type: ignore[misc]
        downsample: nn.Module | None = self.downsample  # type: ignore[assignment]
        return self.body(pre) + (x if downsample is None else downsample(pre))


class PreactBasicBlock(_PreactBlock):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        preactivate: bool = True,
    ) -> None:
        super().__init__(inplanes, preactivate)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(planes)
        self.relu1_2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = downsample

    def body(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu1_2(self.bn1_2(self.conv1(x))))


class PreactBottleneck(_PreactBlock):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        preactivate: bool = True,
    ) -> None:
        super().__init__(inplanes, preactivate)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(planes)
        self.relu1_2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2_3 = nn.BatchNorm2d(planes)
        self.relu2_3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = downsample

    def body(self, x: Tensor) -> Tensor:
        out = self.relu1_2(self.bn1_2(self.conv1(x)))
        return self.conv3(self.relu2_3(self.bn2_3(self.conv2(out))))


PREACT_LAYOUTS = {
    18: (PreactBasicBlock, (2, 2, 2, 2)),
    34: (PreactBasicBlock, (3, 4, 6, 3)),
    50: (PreactBottleneck, (3, 4, 6, 3)),
    101: (PreactBottleneck, (3, 4, 23, 3)),
    152: (PreactBottleneck, (3, 8, 36, 3)),
}


class PreactResNet(nn.Module):
    """Pre-activation ResNet for ImageNet (Distiller's ``preact_resnetNN``): the first block of
    each stride-2 stage pre-activates its input; the first stage's first block does not (the
    stem's BN-ReLU did)."""

    def __init__(self, depth: int, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        block, counts = PREACT_LAYOUTS[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, counts[0], 1)
        self.layer2 = self._stage(block, 128, counts[1], 2)
        self.layer3 = self._stage(block, 256, counts[2], 2)
        self.layer4 = self._stage(block, 512, counts[3], 2)
        self.final_bn = nn.BatchNorm2d(512 * block.expansion)
        self.final_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _kaiming_fan_out(self)

    def _stage(self, block: type, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False)
            )
        blocks = [block(self.inplanes, planes, stride, downsample, stride != 1)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(self.avgpool(x).flatten(1))


def build_preact_resnet(
    num_classes: int, in_channels: int, input_size: int | None, *, depth: int
) -> nn.Module:
    return PreactResNet(depth, num_classes, in_channels)


# ----------------------------------------------------------------------------- AlexNet-BN


class AlexNetBN(nn.Module):
    """AlexNet with BatchNorm (Distiller's ``alexnet_bn``, after TensorPack's DoReFa
    example); it needs ImageNet-sized inputs (at least 67x67 pixels)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        bn = partial(nn.BatchNorm2d, eps=1e-4, momentum=0.9)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 12, stride=4),
            nn.ReLU(inplace=True),
            nn.Conv2d(96, 256, 5, padding=2, groups=2, bias=False),
            bn(256),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 384, 3, padding=1, bias=False),
            bn(384),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2, bias=False),
            bn(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2, bias=False),
            bn(256),
            nn.MaxPool2d(3, stride=2),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveMaxPool2d(6)
        bn1d = partial(nn.BatchNorm1d, eps=1e-4, momentum=0.9)
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096, bias=False),
            bn1d(4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096, bias=False),
            bn1d(4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = (
                    m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    if isinstance(m, nn.Conv2d)
                    else m.in_features
                )
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_alexnet_bn(num_classes: int, in_channels: int, input_size: int | None) -> nn.Module:
    return AlexNetBN(num_classes, in_channels)


# ----------------------------------------------------------------------------- MobileNet v1


def _conv_bn_relu(
    inputs: int, outputs: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, groups=groups,
                  bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    ]  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNet v1 (Howard et al. 2017), Distiller's ``mobilenet`` / ``mobilenet_0NN``:
    depthwise-separable blocks whose channels are scaled by ``channel_multiplier`` (at least
    8)."""

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, channel_multiplier: float = 1.0
    ) -> None:
        super().__init__()
        if channel_multiplier <= 0:
            raise ValueError(f"channel_multiplier must be > 0, got {channel_multiplier}")
        c = [max(math.floor(n * channel_multiplier), 8) for n in (32, 64, 128, 256, 512, 1024)]

        def separable(inputs: int, outputs: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                *_conv_bn_relu(inputs, inputs, 3, stride=stride, padding=1, groups=inputs),
                *_conv_bn_relu(inputs, outputs, 1),
            )

        plan = [(c[0], c[1], 1), (c[1], c[2], 2), (c[2], c[2], 1), (c[2], c[3], 2),
                (c[3], c[3], 1), (c[3], c[4], 2), *[(c[4], c[4], 1)] * 5, (c[4], c[5], 2),
                (c[5], c[5], 1)]  # fmt: skip
        self.model = nn.Sequential(
            nn.Sequential(*_conv_bn_relu(in_channels, c[0], 3, stride=2, padding=1)),
            *(separable(i, o, s) for i, o, s in plan),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(c[5], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.model(x).flatten(1))


def build_mobilenet_v1(
    num_classes: int, in_channels: int, input_size: int | None, *, channel_multiplier: float
) -> nn.Module:
    return MobileNetV1(num_classes, in_channels, channel_multiplier)


DISTILLER_MODELS = {
    "plain20_cifar": build_plain20_cifar,
    **{f"vgg{d}_cifar": partial(build_vgg_cifar, depth=d) for d in VGG_LAYOUTS},
    **{f"preact_resnet{d}": partial(build_preact_resnet, depth=d) for d in PREACT_LAYOUTS},
    "alexnet_bn": build_alexnet_bn,
    "mobilenet": partial(build_mobilenet_v1, channel_multiplier=1.0),
    "mobilenet_025": partial(build_mobilenet_v1, channel_multiplier=0.25),
    "mobilenet_050": partial(build_mobilenet_v1, channel_multiplier=0.5),
    "mobilenet_075": partial(build_mobilenet_v1, channel_multiplier=0.75),
}
"""Registry entries (``models/registry.py`` adds them), named as Distiller names them."""
