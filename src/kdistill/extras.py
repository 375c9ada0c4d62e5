"""Optional features and the extras that install them: one rule for "this needs a package you
do not have".

kdistill's core (training, distillation, the cache, reports) needs torch, torchvision and a few
small packages; features with heavy dependencies are extras of the package
(``pip install 'kdistill[onnx]'``). Each feature asks :func:`require` for its package when it is
used, and a missing one is a one-line error naming the command that installs it. Torch-free.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

# extra -> (what it enables, the distributions it installs)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx": ("ONNX export and int8 ONNX evaluation", ("onnx", "onnxscript", "onnxruntime")),
    "quant": ("quantization-aware training (4-bit and 8-bit students)", ("torchao",)),
    "prune": ("structured (channel) pruning", ("torch-pruning",)),
    "sweep": ("Optuna sweeps", ("optuna",)),
    "tensorboard": ("TensorBoard event files", ("tensorboard",)),
    "timm": ("timm models (timm:<name>)", ("timm",)),
    "hf": ("Hugging Face image classifiers (hf:<directory>)", ("transformers",)),
    "lm": (
        "language models: Hugging Face causal LMs and tokenizers, GGUF files (SmolLM2)",
        ("transformers", "gguf", "accelerate"),
    ),
    "lora": ("low-rank adapters on language-model students (model.lora)", ("peft",)),
}


# Loggers of other packages whose warnings are about those packages' own internals, not about
# anything a kdistill user did or can change: importing torchao (and torch.onnx's exporter)
# logs torch's deprecation of register_constant() for Enum classes on every command.
QUIET_LOGGERS = ("torch.utils._pytree",)


class MissingExtraError(ImportError):
    """A feature was used whose optional package is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'kdistill[{extra}]'"


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` naming the extra that installs it."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and module.split(".")[0] != e.name.split(".")[0]:
            raise  # the package is there but broken: its own error says more
        feature = EXTRAS[extra][0]
        raise MissingExtraError(
            f"{feature} needs the package {module.split('.')[0]!r}, which is not installed: "
            f"{install_hint(extra)}"
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None
