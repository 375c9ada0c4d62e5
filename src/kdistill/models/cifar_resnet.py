"""CIFAR ResNets (He et al. 2016): depth 6n+2 with 16/32/64 channels, and their pre-activation
variants (He et al. 2016b). These are the models of Distiller's CIFAR-10 distillation tables."""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """``conv-BN-ReLU-conv-BN`` plus the shortcut, then ReLU. The projection shortcut is named
    ``downsample`` and absent when the shortcut is the identity, as in Distiller's (and
    torchvision's) ResNets, so Distiller's schedules and checkpoints name the same tensors."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            None
            if stride == 1 and in_planes == planes
            else nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class PadDownsample(nn.Module):
    """A projection without parameters: 2x2 average pooling, then zero channels on both sides
    (Distiller's default shortcut for its pre-activation CIFAR ResNets)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.pad = (planes - in_planes) // 2

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.pad(self.pool(x), (0, 0, 0, 0, self.pad, self.pad))


class PreActBlock(nn.Module):
    """``BN-ReLU-conv-BN-ReLU-conv`` plus shortcut (identity mappings, He et al. 2016b), with
    Distiller's module names (``pre_bn``, ``bn``, ``downsample``). The projection is a 1x1
    convolution (Distiller's ``preact_resnetN_cifar_conv_ds``) or, with ``downsample="pad"``,
    pooling and zero channels (Distiller's ``preact_resnetN_cifar``)."""

    def __init__(self, in_planes: int, planes: int, stride: int, downsample: str = "conv") -> None:
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.pre_relu = nn.ReLU(inplace=False)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = (
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                if downsample == "conv"
                else PadDownsample(in_planes, planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.pre_relu(self.pre_bn(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn(out)))
        return out + shortcut


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem, three stages of n blocks, global pooling."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        preact: bool = False,
        downsample: str = "conv",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if downsample not in ("conv", "pad") or (downsample == "pad" and not preact):
            raise ValueError(
                f"downsample={downsample!r}: conv (a 1x1 convolution) or, for the "
                "pre-activation ResNets, pad (pooling and zero channels)"
            )
        n = (depth - 2) // 6
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        # Post-activation nets normalize the stem; pre-activation nets normalize inside the first
        # block and need a final BN-ReLU after the last one instead.
        self.bn1 = None if preact else nn.BatchNorm2d(16)
        self.final_bn = nn.BatchNorm2d(64) if preact else None
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage: list[nn.Module] = []
            for i in range(n):
                s = stride if i == 0 else 1
                stage.append(
                    PreActBlock(in_planes, planes, s, downsample)
                    if preact
                    else BasicBlock(in_planes, planes, s)
                )
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._register_load_state_dict_pre_hook(self._read_earlier_names)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return self.fc(self.pool(x).flatten(1))

    def _read_earlier_names(self, state: dict[str, Tensor], prefix: str, *_args: object) -> None:
        """Model files and checkpoints written before these modules took Distiller's names
        (``downsample``; ``pre_bn``, ``bn``, ``final_bn`` in the pre-activation blocks) are
        read under the new names."""
        renames = (
            {"shortcut": "downsample", "bn1": "pre_bn", "bn2": "bn"}
            if self.preact
            else {"shortcut": "downsample"}
        )
        for key in [k for k in state if k.startswith(prefix)]:
            parts = key[len(prefix) :].split(".")
            if parts[0] == "bn_final":
                parts[0] = "final_bn"
            elif parts[0].startswith("layer") and len(parts) > 2 and parts[2] in renames:
                parts[2] = renames[parts[2]]
            new = prefix + ".".join(parts)
            if new != key:
                state[new] = state.pop(key)


def build_cifar_resnet(
    num_classes: int,
    in_channels: int,
    input_size: int | None,
    *,
    depth: int,
    preact: bool = False,
    downsample: str = "conv",
) -> CifarResNet:
    """A CIFAR ResNet of the given depth (any image size works: pooling is global)."""
    if input_size is None:
        raise ValueError("CIFAR ResNets need image inputs (N, C, H, W), not flat vectors")
    return CifarResNet(depth, num_classes, in_channels, preact, downsample)
