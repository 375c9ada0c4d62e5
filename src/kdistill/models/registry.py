"""The one model registry: name -> builder. Builders share the signature
``builder(num_classes, in_channels, input_size, **args)``; ``input_size`` is the image side, or
``None`` for flat feature vectors (then ``in_channels`` is the number of features)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import nn

from kdistill.models.cifar_resnet import build_cifar_resnet
from kdistill.models.lenet import build_lenet5
from kdistill.models.mlp import build_mlp
from kdistill.models.torchvision_models import build_mobilenet_v2, build_torchvision_resnet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "lenet5": build_lenet5,
    "resnet8_cifar": partial(build_cifar_resnet, depth=8, preact=False),
    "resnet14_cifar": partial(build_cifar_resnet, depth=14, preact=False),
    "resnet20_cifar": partial(build_cifar_resnet, depth=20, preact=False),
    "resnet32_cifar": partial(build_cifar_resnet, depth=32, preact=False),
    "resnet44_cifar": partial(build_cifar_resnet, depth=44, preact=False),
    "resnet56_cifar": partial(build_cifar_resnet, depth=56, preact=False),
    "resnet110_cifar": partial(build_cifar_resnet, depth=110, preact=False),
    "preact_resnet20_cifar": partial(build_cifar_resnet, depth=20, preact=True),
    "preact_resnet32_cifar": partial(build_cifar_resnet, depth=32, preact=True),
    "preact_resnet44_cifar": partial(build_cifar_resnet, depth=44, preact=True),
    "preact_resnet56_cifar": partial(build_cifar_resnet, depth=56, preact=True),
    "preact_resnet110_cifar": partial(build_cifar_resnet, depth=110, preact=True),
    "resnet18": partial(build_torchvision_resnet, depth=18),
    "resnet34": partial(build_torchvision_resnet, depth=34),
    "resnet50": partial(build_torchvision_resnet, depth=50),
    "mobilenet_v2": build_mobilenet_v2,
}

_SHAPE_ARGS = ("num_classes", "in_channels", "input_size")


def resolve_builder(arch: str) -> Callable[..., nn.Module]:
    """The builder for a registry name or a ``package.module:function`` import path."""
    if arch in MODELS:
        return MODELS[arch]
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(
                f"model {arch!r}: cannot import module {module_name!r} ({e})"
            ) from None
        builder = getattr(module, attr, None)
        if not callable(builder):
            raise ValueError(f"model {arch!r}: {module_name!r} has no callable {attr!r}")
        return builder
    raise ValueError(
        f"unknown model {arch!r}; choose one of {', '.join(MODELS)} or give an import path "
        "'package.module:builder'"
    )


def builder_args(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    """The keyword arguments a user may set for a builder, with their defaults."""
    sig = inspect.signature(builder)
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in sig.parameters.items()
        if name not in _SHAPE_ARGS
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and not (isinstance(builder, partial) and name in builder.keywords)
    }


def build_model(
    arch: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build ``arch`` for inputs of ``input_shape`` (``(C, H, W)`` or ``(F,)``).

    Raises:
        ValueError: unknown architecture, unknown argument, or unsuitable input shape.
    """
    builder = resolve_builder(arch)
    args = dict(args or {})
    allowed = builder_args(builder)
    sig = inspect.signature(builder)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = sorted(set(args) - set(allowed))
    if unknown and not takes_kwargs:
        raise ValueError(
            f"model {arch!r} has no argument(s) {', '.join(unknown)}; valid: "
            f"{', '.join(allowed) or '(none)'}"
        )
    if len(input_shape) == 3:
        c, h, w = input_shape
        if h != w:
            raise ValueError(
                f"model {arch!r}: images must be square, got {h}x{w} (set data.image_size)"
            )
        shape = {"num_classes": num_classes, "in_channels": c, "input_size": h}
    elif len(input_shape) == 1:
        shape = {"num_classes": num_classes, "in_channels": input_shape[0], "input_size": None}
    else:
        raise ValueError(f"input shape must be (C, H, W) or (F,), got {input_shape}")
    accepted = {k: v for k, v in shape.items() if k in sig.parameters or takes_kwargs}
    try:
        model = builder(**accepted, **args)
    except TypeError as e:
        raise ValueError(f"model {arch!r} with args {args}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model builder {arch!r} returned {type(model).__name__}, not an nn.Module"
        )
    return model
