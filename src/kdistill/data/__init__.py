"""Datasets (nothing downloads), stable sample ids, the in-memory batch pipeline and the
streaming pipeline for image files."""

from kdistill.data.augment import Augment, CropFlip, ResizedCropFlip, build_augment
from kdistill.data.bundle import DataBundle, build_data, first_input
from kdistill.data.image_files import ImageFiles
from kdistill.data.loader import BatchLoader, epoch_generator
from kdistill.data.sources import DataError, Split
from kdistill.data.stream import StreamLoader, loader_for
from kdistill.types import Batch

__all__ = [
    "Augment",
    "Batch",
    "BatchLoader",
    "CropFlip",
    "DataBundle",
    "DataError",
    "ImageFiles",
    "ResizedCropFlip",
    "Split",
    "StreamLoader",
    "build_augment",
    "build_data",
    "epoch_generator",
    "first_input",
    "loader_for",
]
