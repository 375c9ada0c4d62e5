"""The one model registry: name -> builder. Builders share the signature
``builder(num_classes, in_channels, input_size, **args)``; ``input_size`` is the image side, or
``None`` for flat feature vectors (then ``in_channels`` is the number of features)."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import nn

from kdistill.interop.distiller import KDISTILL_ARCHS
from kdistill.models.causal_lm import HF_CAUSAL_LM, causal_lm_from_config
from kdistill.models.cifar_resnet import build_cifar_resnet
from kdistill.models.distiller_models import DISTILLER_MODELS
from kdistill.models.ecosystem import hf_builder, timm_builder
from kdistill.models.gpt import LANGUAGE_MODELS, build_language_model
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
    **DISTILLER_MODELS,
}
# the Distiller adapter maps these names to the registry unchanged: they must all be here
assert set(MODELS) >= KDISTILL_ARCHS, f"not registered: {sorted(KDISTILL_ARCHS - set(MODELS))}"

_SHAPE_ARGS = ("num_classes", "in_channels", "input_size")


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """Any torchvision classification model by name (``torchvision:resnet18``), untrained
    (``weights=None``: nothing is downloaded)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"torchvision has no classification model {name!r}{hint} "
            "(torchvision.models.list_models(module=torchvision.models) lists them)"
        )
    return partial(torchvision.models.get_model, name, weights=None)


def resolve_builder(arch: str) -> Callable[..., nn.Module]:
    """The builder for a registry name, ``torchvision:<name>``, ``timm:<name>``,
    ``hf:<directory>``, or a ``package.module:function`` import path."""
    if arch in MODELS:
        return MODELS[arch]
    if arch.startswith("torchvision:"):
        return torchvision_builder(arch.partition(":")[2])
    if arch.startswith("timm:"):
        return timm_builder(arch.partition(":")[2])
    if arch.startswith("hf:"):
        return hf_builder(arch.partition(":")[2])
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
    if (
        arch in LANGUAGE_MODELS or arch == HF_CAUSAL_LM
    ):  # token ids in: the input shape is (context,), classes the vocabulary
        if len(input_shape) != 1:
            raise ValueError(
                f"model {arch!r} is a language model: its input is token sequences, shape "
                f"(context,), not {input_shape}"
            )
        if arch == HF_CAUSAL_LM:  # a student that started from a pretrained causal LM
            unknown = sorted(set(args or {}) - {"config"})
            if unknown:
                raise ValueError(f"model {arch!r} takes only args.config, not {', '.join(unknown)}")
            return causal_lm_from_config(num_classes, input_shape[0], (args or {}).get("config"))
        return build_language_model(arch, num_classes, input_shape[0], args)
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
    model, passed = _call_builder(builder, arch, shape, args, sig, takes_kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model builder {arch!r} returned {type(model).__name__}, not an nn.Module"
        )
    # A builder with its own signature (torchvision's, a user's) is adapted to the data: the
    # first convolution takes the data's channels, the last linear layer gives its classes.
    # Only a parameter the builder names is trusted to have been used: one passed through
    # **kwargs may have been swallowed (torchvision's MobileNetV3 ignores unknown keywords).
    notes = list(getattr(model, "kdistill_adapted", ()))  # what the builder itself replaced
    if "in_channels" not in passed and len(input_shape) == 3:
        notes += adapt_first_conv(model, input_shape[0])
    if "num_classes" not in passed:
        notes += adapt_head(model, num_classes)
    model.kdistill_adapted = tuple(notes)  # type: ignore[assignment]
    if len(input_shape) == 3:
        check_input_size(model, arch, input_shape)
    return model


def check_input_size(model: nn.Module, arch: str, input_shape: tuple[int, ...]) -> None:
    """One sample through ``model`` (eval mode, no gradients: nothing it holds changes), so
    that a network too large for the data's images fails here, with the size named, rather
    than in the first training step with the library's own words (a ViT's patch-size assertion,
    SqueezeNet's "Output size is too small")."""
    import torch

    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    except Exception as e:  # any library's refusal of the size; re-raised with it named
        c, h, w = input_shape
        known = _expected_size(model)
        hint = f"; it was made for {known}" if known else ""
        raise ValueError(
            f"model {arch!r} cannot take the data's {c}x{h}x{w} images ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no message'}){hint}: set data.image_size "
            "to resize them, or choose a model for small images"
        ) from None
    finally:
        model.train(was_training)


def _expected_size(model: nn.Module) -> str | None:
    """The input size a model says it was made for, where it says so (timm's pretrained_cfg;
    a patch embedding's img_size)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
        return "x".join(str(v) for v in cfg["input_size"])
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return "x".join(str(v) for v in size) if isinstance(size, (tuple, list)) else None


def _call_builder(
    builder: Callable[..., nn.Module],
    arch: str,
    shape: Mapping[str, Any],
    args: Mapping[str, Any],
    sig: inspect.Signature,
    takes_kwargs: bool,
) -> tuple[Any, set[str]]:
    """Call ``builder`` with the shape arguments it accepts: those it names, and, through
    ``**kwargs``, those it does not reject (torchvision's builders forward every keyword to the
    model, which rejects ``in_channels``). Returns the model and the shape arguments the
    builder names (the only ones known to have been used)."""
    named = {k: v for k, v in shape.items() if k in sig.parameters}
    hopeful = {k: v for k, v in shape.items() if k not in named and takes_kwargs}
    while True:
        try:
            return builder(**named, **hopeful, **args), set(named)
        except TypeError as e:
            rejected = next((k for k in hopeful if f"'{k}'" in str(e)), None)
            if rejected is None:
                raise ValueError(f"model {arch!r} with args {dict(args)}: {e}") from None
            del hopeful[rejected]


def adapt_first_conv(model: nn.Module, in_channels: int) -> list[str]:
    """Replace the first ``Conv2d`` when it takes another number of channels (a 3-channel
    network for 1-channel images); the new layer is freshly initialized."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return []
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride,
                module.padding, module.dilation, 1,  # groups: a depthwise stem becomes dense
                module.bias is not None, module.padding_mode,
            )  # fmt: skip
            _set_submodule(model, name, new)
            return [
                f"replaced {name} (Conv2d {module.in_channels} -> {in_channels} input channels)"
            ]
    return []


def adapt_head(model: nn.Module, num_classes: int) -> list[str]:
    """Replace the last ``Linear`` layer when it gives another number of classes."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None or last[1].out_features == num_classes:
        return []
    name, module = last
    _set_submodule(model, name, nn.Linear(module.in_features, num_classes, module.bias is not None))
    return [f"replaced {name} (Linear {module.out_features} -> {num_classes} classes)"]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
