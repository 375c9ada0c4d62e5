"""Low-rank adapters on a language-model student (LoRA through ``peft``'s
``inject_adapter_in_model``, which adds them to any module in place, kdistill's GPTs and
Hugging Face models alike): the chosen Linear layers become ``W x + (alpha / rank) B A x`` with
``W`` frozen, and only ``A`` and ``B`` train.

:class:`Adapters` carries them through the run the way the compression callbacks carry their
structure: the model file records the setting (``lora``), which adds the same adapters before
the weights load (resume, ``kdistill eval``), and the record says how many parameters trained.
:func:`merge_adapters` folds them into the frozen weights (``kdistill merge``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdistill.compression.selection import matches
from kdistill.engine.trainer import Callback
from kdistill.extras import require
from kdistill.objectives.tokens import output_head

ADAPTER_NAME = "default"  # peft's name for a model's one adapter


def adapter_targets(model: nn.Module, targets: tuple[str, ...] | None) -> list[str]:
    """The names of the Linear layers that get adapters: those ``targets`` match (names or
    're:regex'), or every Linear layer but the output head. A pattern that matches no Linear
    layer is named."""
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    if targets is None:
        head = output_head(model) or getattr(model, "head", None)
        modules = dict(model.named_modules())
        return [n for n in linears if modules[n] is not head]
    for pattern in targets:
        if not any(matches(n, pattern) for n in linears):
            shown = ", ".join(linears[:8]) + (" ..." if len(linears) > 8 else "")
            raise ValueError(
                f"model.lora.targets: {pattern!r} matches no Linear layer; layers: {shown}"
            )
    return [n for n in linears if any(matches(n, p) for p in targets)]


def add_adapters(model: nn.Module, settings: Mapping[str, Any]) -> list[str]:
    """Add adapters to ``model`` in place (``settings``: rank, alpha, dropout, targets) and
    freeze everything else; returns the adapted layers' names. New adapters compute nothing
    (``B`` starts at zero): the model's outputs are unchanged."""
    require("peft", "lora")
    from peft import LoraConfig, inject_adapter_in_model

    targets = settings.get("targets")
    names = adapter_targets(model, tuple(targets) if targets is not None else None)
    config = LoraConfig(
        r=int(settings["rank"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in f".{name}")
    return names


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The adapted layers of ``model`` (peft's LoRA layers), with their names."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its frozen weight and put the plain Linear layer back, in place:
    the model computes what it did, with no adapters left. Returns the layers merged."""
    require("peft", "lora")
    layers = adapter_layers(model)
    modules = dict(model.named_modules())
    for name, layer in layers:
        layer.merge(safe_merge=True)  # refuses a merge that makes weights non-finite
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return len(layers)


class Adapters(Callback):
    """The student's adapters in the run: nothing to do during training (they were added when
    the student was built); says what its model files must record and what trained."""

    def __init__(self, settings: Mapping[str, Any], layers: list[str]) -> None:
        self.settings = dict(settings)
        self.layers = layers

    def structure(self) -> dict[str, Any]:
        return {"lora": self.settings}

    def report(self, student: nn.Module) -> dict[str, Any]:
        params = list(student.parameters())
        return {
            "lora": {
                **self.settings,
                "layers": len(self.layers),
                "trainable_params": sum(p.numel() for p in params if p.requires_grad),
                "params": sum(p.numel() for p in params),
            }
        }
