"""Distiller's names as kdistill's: models, parameters, layers."""

from __future__ import annotations

import re

from kdistill.interop.distiller.errors import DistillerError

# Distiller's models that kdistill's registry builds with the same structure and parameter
# names, and kdistill's own registry names (passed through). models/registry.py checks at
# import that each is registered, so this list cannot drift from the registry.
KDISTILL_ARCHS = frozenset(
    {
        "mlp", "lenet5", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
        *(f"resnet{d}_cifar" for d in (8, 14, 20, 32, 44, 56, 110)),
        *(f"preact_resnet{d}_cifar" for d in (20, 32, 44, 56, 110)),
        "plain20_cifar", "vgg11_cifar", "vgg13_cifar", "vgg16_cifar", "vgg19_cifar",
        "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101",
        "preact_resnet152", "alexnet_bn", "mobilenet", "mobilenet_025", "mobilenet_050",
        "mobilenet_075",
    }
)  # fmt: skip
# Distiller's own models that kdistill does not have (its other names are torchvision's).
_DISTILLER_ONLY = re.compile(
    r"(.*_cifar\d*|.*_mnist|.*_conv_ds|mobilenet(_\d+)?|preact_resnet\d+|.*_earlyexit|"
    r"plain\d+.*|vgg\d+_bn_cifar)"
)


# Distiller's pre-activation CIFAR ResNets shortcut with pooling and zero channels; its
# ``_conv_ds`` variants with a 1x1 convolution, kdistill's default.
_PREACT_CIFAR = re.compile(r"(preact_resnet\d+_cifar)(_conv_ds)?")


def arch_args(name: str) -> dict[str, str]:
    """The builder arguments that make kdistill's model of Distiller's ``name`` (its
    pre-activation CIFAR ResNets without ``_conv_ds`` shortcut by padding)."""
    m = _PREACT_CIFAR.fullmatch(name.strip().lower())
    return {"downsample": "pad"} if m and not m.group(2) else {}


def map_arch(name: str, flag: str = "--arch") -> str:
    """Distiller's model name as kdistill's: the same name for the models kdistill builds as
    Distiller does (its CIFAR ResNets, plain20, VGG-CIFAR, pre-activation ResNets, AlexNet-BN,
    MobileNet v1), ``torchvision:<name>`` for the ImageNet models Distiller takes from
    torchvision; Distiller's other models are an error."""
    name = name.strip().lower()  # Distiller lower-cases -a
    preact = _PREACT_CIFAR.fullmatch(name)
    if preact and preact.group(1) in KDISTILL_ARCHS:
        return preact.group(1)  # the shortcut is arch_args's
    if name in KDISTILL_ARCHS or ":" in name:
        return name
    if _DISTILLER_ONLY.fullmatch(name) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        distillers = ", ".join(sorted(a for a in KDISTILL_ARCHS if a not in _KDISTILL_ONLY))
        raise DistillerError(
            f"{flag} {name}: kdistill has no counterpart of this Distiller model. Supported: "
            f"{distillers}; torchvision's ImageNet models by name (resnet18, vgg16, ...); "
            "kdistill's own (kdistill models); or an import path package.module:builder"
        )
    return f"torchvision:{name}"


_KDISTILL_ONLY = frozenset({"mlp", "lenet5", "resnet18", "resnet34", "resnet50", "mobilenet_v2"})


def parameter_to_module(name: str) -> str:
    """``module.layer1.0.conv1.weight`` -> ``layer1.0.conv1`` (DataParallel's prefix and the
    tensor's name dropped: kdistill's policies name modules). Distiller wraps only the
    ``features`` of AlexNet and VGG in DataParallel, so ``features.module.0.weight`` ->
    ``features.0`` too."""
    name = name.strip()
    name = name.removeprefix("module.").replace(".module.", ".")
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def override_key(name: str) -> str:
    """A Distiller override key (a module name or a regular expression) as kdistill's."""
    name = name.removeprefix("module.")
    return f"re:{name}" if re.search(r"[*+?\[\]()|^$\\]", name) else name
