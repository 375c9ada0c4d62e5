"""Datasets (nothing downloads), stable sample ids, and the in-memory batch pipeline."""

from kdistill.data.augment import CropFlip, build_augment
from kdistill.data.bundle import DataBundle, build_data
from kdistill.data.loader import BatchLoader, epoch_generator
from kdistill.data.sources import DataError, Split
from kdistill.types import Batch

__all__ = [
    "Batch",
    "BatchLoader",
    "CropFlip",
    "DataBundle",
    "DataError",
    "Split",
    "build_augment",
    "build_data",
    "epoch_generator",
]
