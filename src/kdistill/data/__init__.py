"""Datasets (nothing downloads), stable sample ids, and the in-memory batch pipeline."""

from kdistill.data.augment import CropFlip
from kdistill.data.bundle import DataBundle, build_data
from kdistill.data.loader import Batch, BatchLoader, epoch_generator
from kdistill.data.sources import DataError, Split

__all__ = [
    "Batch",
    "BatchLoader",
    "CropFlip",
    "DataBundle",
    "DataError",
    "Split",
    "build_data",
    "epoch_generator",
]
