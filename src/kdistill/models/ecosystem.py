"""Models of other libraries, by name: ``timm:<name>`` and ``hf:<local directory>``.

Both are library registries, not code a file chooses: ``timm:`` selects one of timm's own
builders (always ``pretrained=False``, so nothing is downloaded), and ``hf:`` loads a Hugging
Face image classifier saved with ``save_pretrained`` from a local directory
(``local_files_only=True``, ``trust_remote_code=False``: only transformers' own model classes).
timm and transformers are optional extras (``kdistill[timm]``, ``kdistill[hf]``).
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from kdistill.extras import require

# timm.create_model's arguments that read files or download: never passed, whatever asks
# (a config, or a model file's recorded args).
TIMM_FILE_ARGS = frozenset({
    "pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
    "pretrained_strict",
})  # fmt: skip


def timm_builder(name: str) -> Callable[..., nn.Module]:
    """timm's model ``name``, untrained, built for the data's classes and channels (timm's
    ``num_classes`` and ``in_chans``); other ``model.args`` go to timm's builder."""
    timm = require("timm", "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint} (timm.list_models() lists them)")

    def build(num_classes: int, in_channels: int, **kwargs: object) -> nn.Module:
        reads = sorted(set(kwargs) & TIMM_FILE_ARGS)
        if reads:
            raise ValueError(
                f"timm:{name}: model.args {', '.join(reads)} would make timm read weights or "
                "configs from files or the Hub; kdistill builds timm models untrained and loads "
                "weights itself: give them as model.checkpoint (or a teacher's checkpoint)"
            )
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )

    return build


class HuggingFaceLogits(nn.Module):
    """A transformers image classifier as a module from images to logits (its output's
    ``logits``), which is what kdistill's students and teachers return."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def hf_builder(directory: str) -> Callable[..., nn.Module]:
    """The Hugging Face image classifier saved in ``directory``, with its weights; a head for
    another number of classes or a first layer for another number of channels is replaced
    (freshly initialized, and said)."""
    transformers = require("transformers", "hf")
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"hf:{directory}: no config.json there; give a local directory written by "
            "save_pretrained (kdistill never downloads from the Hub)"
        )

    def build(num_classes: int, in_channels: int) -> nn.Module:
        options = {"local_files_only": True, "trust_remote_code": False}
        config = transformers.AutoConfig.from_pretrained(str(path), **options)
        changes: dict[str, int] = {}
        if config.num_labels != num_classes:
            changes["num_labels"] = num_classes
        if getattr(config, "num_channels", in_channels) != in_channels:
            changes["num_channels"] = in_channels
        try:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                str(path), ignore_mismatched_sizes=bool(changes), **options, **changes
            )
        except (OSError, ValueError, pickle.UnpicklingError) as e:
            # UnpicklingError: transformers refused a pickled pytorch_model.bin (weights_only)
            raise ValueError(f"hf:{directory}: cannot load an image classifier ({e})") from None
        wrapped = HuggingFaceLogits(model)
        names = {"num_labels": "classes", "num_channels": "input channels"}
        wrapped.kdistill_adapted = tuple(  # type: ignore[assignment]
            f"{names[key]} {getattr(config, key)} -> {value} (the layers it sizes are new)"
            for key, value in changes.items()
        )
        return wrapped

    return build
