"""``build_data``: a dataset from the config, split into train / val / test, with statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import get_args

import numpy as np
import torch
from torch import Tensor

from kdistill.config.schema import TEXT_DATASETS, DataConfig, DatasetName
from kdistill.data.image_files import ImageFiles
from kdistill.data.sources import (
    DataError,
    RawData,
    Split,
    read_cifar,
    read_digits,
    read_fashion_mnist,
    read_image_folder,
    read_mnist,
    read_npz,
)
from kdistill.hardware import total_memory_bytes

# Sources without a test split (digits; image folders or npz files without one) hold out this
# fraction of their samples, chosen with data.split_seed.
HELD_OUT_TEST_FRACTION = 0.2

READERS: dict[str, Callable[[DataConfig], RawData]] = {
    "digits": lambda cfg: read_digits(),
    "fashion-mnist": lambda cfg: read_fashion_mnist(cfg.root),
    "mnist": lambda cfg: read_mnist(cfg.root),
    "cifar10": lambda cfg: read_cifar(cfg.root, 10),
    "cifar100": lambda cfg: read_cifar(cfg.root, 100),
    "imagefolder": lambda cfg: _read_folder(cfg),
    "npz": lambda cfg: read_npz(cfg.root),
}
# every image dataset has a reader; text (TEXT_DATASETS) is read by kdistill.data.text
assert set(READERS) == set(get_args(DatasetName)) - set(TEXT_DATASETS), (
    "READERS and config.schema.DatasetName disagree"
)


def _read_folder(cfg: DataConfig) -> RawData:
    """An image folder, in memory or streamed as ``data.pipeline`` says (``auto``: streamed
    when resized crops need the files, or when decoded it would take more than a quarter of
    this machine's memory)."""
    if cfg.pipeline == "auto" and cfg.augment.crop == "resized":
        raw = read_image_folder(cfg.root, cfg.image_size, "stream")
        return replace(raw, pipeline_reason="resized crops are cut from the full-resolution files")
    memory = total_memory_bytes()
    budget = None if memory is None else memory // 4
    return read_image_folder(cfg.root, cfg.image_size, cfg.pipeline, budget)


@dataclass(frozen=True)
class DataBundle:
    """Splits plus what models and the pipeline need to know about them.

    Attributes:
        train, val, test: the splits (``val`` is ``None`` unless ``data.val_fraction > 0``).
        num_classes: number of classes.
        class_names: a name per class.
        input_shape: one sample's shape, ``(C, H, W)`` or ``(F,)``.
        mean, std: per-channel (or per-feature) statistics of ``train`` in [0, 1] units; the
            pipeline standardizes with them when ``data.normalize`` is on.
        source: where the data came from (a path, or the bundled dataset's name).
        pipeline, pipeline_reason: ``memory`` (the splits' images are tensors) or ``stream``
            (they are :class:`ImageFiles`, decoded by the streaming loader), and why.
        channels_reason: for image folders, whether they are read as grayscale or RGB, and why.
    """

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    pipeline: str = "memory"
    pipeline_reason: str = "loaded whole"
    channels_reason: str | None = None

    def describe_pipeline(self) -> str:
        line = f"data pipeline: {self.pipeline} ({self.pipeline_reason})"
        if self.channels_reason is not None:
            line += f"; images: {self.channels_reason}"
        return line


def _seeded_permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held-out) with ``round(fraction * N)`` samples held out; ids are preserved."""
    n = len(split)
    k = round(fraction * n)
    if k == 0 or k == n:
        raise DataError(
            f"holding out {fraction:.0%} of {n} samples leaves an empty split; use a fraction "
            f"between {1 / n:.3g} and {1 - 1 / n:.3g}"
        )
    perm = _seeded_permutation(n, seed)
    held, rest = perm[:k].sort().values, perm[k:].sort().values
    return split.subset(rest), split.subset(held)


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 0..255 -> float32 0..1; float images are assumed to be in [0, 1] already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def first_input(split: Split) -> Tensor:
    """The split's first sample as a ``(1, ...)`` float batch in [0, 1] (to size layers)."""
    images = split.images
    first = images.decode_many([0]) if isinstance(images, ImageFiles) else images[:1]
    return to_unit_float(first)


def channel_stats(images: Tensor | ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (images) or per-feature (vectors) mean and std, in [0, 1] units; of a
    seeded sample of the files when the images are streamed (:data:`~kdistill.data.image_files.STATS_SAMPLES`).

    The same on every machine and with any number of threads: they key teacher caches, and
    torch's multi-threaded float sums change in the last digit with the thread count (a busy
    machine, where kdistill takes fewer threads, rebuilt a cache for it). 8-bit images are
    summed exactly in integers; float data in float64 by numpy, whose pairwise sums do not
    depend on threads."""
    if isinstance(images, ImageFiles):
        images = images.stats_sample()
    dims = (0, 2, 3) if images.dim() == 4 else (0,)
    exact = images.dtype == torch.uint8
    total = np.zeros(images.shape[1], dtype=np.int64 if exact else np.float64)
    total_sq = np.zeros_like(total)
    count = 0
    rows = max(1, 2**22 // max(1, images[0].numel()))  # 32 MiB of int64 / float64 at a time
    for chunk in images.split(rows):
        x = chunk.numpy().astype(np.int64) if exact else chunk.double().numpy()
        total += x.sum(axis=dims)
        total_sq += (x * x).sum(axis=dims)
        count += x.size // x.shape[1]
    scale = 255.0 if exact else 1.0
    mean = total / (count * scale)
    var = total_sq / (count * scale * scale) - mean * mean
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_classes(raw: RawData, name: str) -> None:
    """At least two classes, and training samples for every class: a classifier cannot learn a
    class it never sees, and "100%" on one class means nothing."""
    names = raw.class_names
    if len(names) < 2:
        raise DataError(
            f"{name} ({raw.source}) has {len(names)} class ({', '.join(names) or 'none'}): "
            "classification needs at least two"
        )
    counts = torch.bincount(raw.train.labels, minlength=len(names))
    empty = [names[i] for i in range(len(names)) if counts[i] == 0]
    if empty:
        listed = ", ".join(repr(c) for c in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DataError(
            f"{name} ({raw.source}): class(es) {listed}{more} have no training samples; remove "
            "them or add samples"
        )


def build_data(cfg: DataConfig) -> DataBundle:
    """Read ``cfg.name`` and split it.

    Raises:
        DataError: data missing or malformed, with what to do about it; text (the language
            models' data, read by :mod:`kdistill.data.text`), where a command needs images.
    """
    if cfg.name in TEXT_DATASETS:
        raise DataError(
            f"data.name={cfg.name} is text for language models, which kdistill train, eval, "
            "sweep, cache build and demo lm handle; this command handles image data only (not "
            "yet language models)"
        )
    raw = READERS[cfg.name](cfg)
    check_classes(raw, cfg.name)
    train, test = raw.train, raw.test
    if test is None:
        # The test samples keep their ids; a different split_seed gives a different split.
        train, test = _hold_out(train, HELD_OUT_TEST_FRACTION, cfg.split_seed)
    val = None
    if cfg.val_fraction > 0:
        train, val = _hold_out(train, cfg.val_fraction, cfg.split_seed + 1)
    if cfg.augment.enabled and train.images.dim() != 4:
        raise DataError(
            f"data.augment (crop/flip) needs images, but {cfg.name} holds feature vectors of shape "
            f"{tuple(train.images.shape[1:])}; turn augmentation off"
        )
    mean, std = channel_stats(train.images)
    return DataBundle(
        name=cfg.name,
        train=train,
        val=val,
        test=test,
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        input_shape=tuple(train.images.shape[1:]),
        mean=mean,
        std=std,
        source=raw.source,
        pipeline=raw.pipeline,
        pipeline_reason=raw.pipeline_reason,
        channels_reason=raw.channels_reason,
    )


__all__ = [
    "READERS",
    "DataBundle",
    "build_data",
    "channel_stats",
    "first_input",
    "to_unit_float",
]
