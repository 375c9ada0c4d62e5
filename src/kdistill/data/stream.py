"""The streaming image pipeline: DataLoader workers decode image files on the fly.

A :class:`StreamLoader` is a :class:`BatchLoader` whose images stay on disk
(:class:`ImageFiles`). The epoch's plan (order and views) is drawn exactly as in memory, in the
training process; the workers only decode, crop and resize the files they are told to, so the
batches are the same whatever the number of workers, and memory holds a few batches, not the
dataset. Crops of the full-resolution file (:class:`ResizedCropFlip`) are taken in the
workers, each view's box drawn from its seeded generator, or replayed from the boxes a
teacher-output cache recorded; padding crops (:class:`CropFlip`) are applied to the decoded
batch as in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdistill.data.augment import Augment, ResizedCropFlip
from kdistill.data.errors import DataError
from kdistill.data.image_files import ImageFiles
from kdistill.data.loader import BatchLoader
from kdistill.data.sources import Split
from kdistill.hardware import choose_workers
from kdistill.types import Batch

BoxReplay = Callable[[Tensor, Tensor], np.ndarray]
"""``(sample ids, views) -> (B, 5)`` the recorded ``(top, left, height, width, flip)`` boxes."""

NO_BOX = (-1, -1, -1, -1, -1)  # a batch item without a box: the whole image, resized


class _Decode(Dataset):
    """Item ``(position, sample id, view, box)`` -> ``(image, box used)``; runs in the workers."""

    def __init__(self, files: ImageFiles, crops: ResizedCropFlip | None) -> None:
        self.files = files
        self.crops = crops

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int, int, tuple[int, ...]]) -> tuple[Any, Any]:
        # A bad file comes back as its message, raised again in the training process: an
        # exception raised in a worker would reach the user wrapped in the worker's traceback.
        try:
            return self._decode(*item)
        except DataError as e:
            return None, str(e)

    def _decode(
        self, position: int, sample_id: int, view: int, box: tuple[int, ...]
    ) -> tuple[np.ndarray, Any]:
        if self.crops is None or view < 0:
            return self.files.decode(position), NO_BOX
        if box != NO_BOX:  # replayed
            return self.files.decode(position, box), box
        crops = self.crops
        return self.files.decode_with(
            position, lambda height, width: crops.box(sample_id, view, height, width)
        )


def _collate(items: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor]:
    for image, problem in items:
        if image is None:
            bad = _BadFile(problem)
            return bad, bad  # type: ignore[return-value]
    images = torch.from_numpy(np.stack([image for image, _ in items]))
    boxes = torch.tensor([box for _, box in items], dtype=torch.int32)
    return images, boxes


class _BadFile:
    """What a batch with an unreadable file decodes to: the file's error, to raise here."""

    def __init__(self, message: str) -> None:
        self.message = message


def _checked(decoded: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    images, _ = decoded
    if isinstance(images, _BadFile):
        raise DataError(images.message)
    return decoded


def _single_thread(worker_id: int) -> None:
    # A worker decodes; torch's own thread pool there would only compete with training.
    torch.set_num_threads(1)


class _Plan:
    """The batch sampler: the items of the batches to decode next (set before each pass).

    The DataLoader iterates it in the training process, so one set of persistent workers
    serves every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int, int, tuple[int, ...]]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int, int, tuple[int, ...]]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader(BatchLoader):
    """Batches of a split whose images are files, decoded by ``workers`` DataLoader processes.

    Args (besides :class:`BatchLoader`'s):
        workers: DataLoader worker processes; 0 decodes in this process.
        replay: the recorded crop boxes of ``(sample id, view)`` pairs (a teacher-output
            cache's), used instead of drawing them: the student sees exactly the crops the
            teacher saw.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        workers: int = 0,
        replay: BoxReplay | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(split, batch_size, **kwargs)
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.replay = replay
        crops = self.augment if isinstance(self.augment, ResizedCropFlip) else None
        self._dataset = _Decode(self.images, crops)
        self._plan = _Plan()
        self._loader: DataLoader | None = None
        self._threads: ThreadPoolExecutor | None = None

    def _hold(self, split: Split, augment: Augment | None) -> None:
        if not isinstance(split.images, ImageFiles):
            raise ValueError("StreamLoader reads image files; this split is held in memory")
        self.images = split.images  # type: ignore[assignment]

    def _items(
        self, positions: Tensor, views: Tensor | None
    ) -> list[tuple[int, int, int, tuple[int, ...]]]:
        ids = self.ids[positions]
        if views is None:
            return [(int(p), int(i), -1, NO_BOX) for p, i in zip(positions, ids, strict=True)]
        boxes: list[tuple[int, ...]] = [NO_BOX] * len(positions)
        if self.replay is not None and isinstance(self.augment, ResizedCropFlip):
            boxes = [tuple(int(v) for v in row) for row in self.replay(ids, views)]
        return [
            (int(p), int(i), int(v), b)
            for p, i, v, b in zip(positions, ids, views, boxes, strict=True)
        ]

    def decode(self, positions: Tensor, views: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(images, boxes)`` of the samples at ``positions``, decoded in this process by
        ``workers`` threads (Pillow decodes without the GIL): uint8 ``(B, C, H, W)`` and the
        ``(B, 5)`` crop boxes used (``-1`` rows: no crop). For one-off batches (the teacher
        cache's build, calibration), where starting worker processes would cost more."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max(1, self.workers))
        return _checked(
            _collate(
                list(self._threads.map(self._dataset.__getitem__, self._items(positions, views)))
            )
        )

    def make_batch(self, positions: Tensor, views: Tensor | None) -> Batch:
        images, _ = self.decode(positions, views)
        return self.finish_batch(positions, views, images)

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self._dataset,  # type: ignore[arg-type]
                batch_sampler=self._plan,
                num_workers=self.workers,
                collate_fn=_collate,
                persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None,
                pin_memory=self.device.type == "cuda",
                worker_init_fn=_single_thread if self.workers > 0 else None,
            )
        return self._loader

    def stream(self, batches: list[tuple[Tensor, Tensor | None]]) -> Iterator[tuple[Batch, Tensor]]:
        """The :class:`Batch` and the ``(B, 5)`` crop boxes of each planned ``(positions,
        views)`` batch, in order, decoded ahead by the worker processes while the caller
        works on the previous ones."""
        self._plan.batches = [self._items(p, v) for p, v in batches]
        for (positions, views), decoded in zip(batches, self._data_loader(), strict=True):
            images, boxes = _checked(decoded)
            yield self.finish_batch(positions, views, images), boxes

    def __iter__(self) -> Iterator[Batch]:
        for batch, _ in self.stream(list(self.planned_batches())):
            yield batch


def loader_for(
    split: Split, batch_size: int, *, workers: int | None = None, **kwargs: Any
) -> BatchLoader:
    """The loader a split needs: :class:`StreamLoader` for image files (with ``workers``, by
    default one per physical core torch's threads leave free), else the in-memory
    :class:`BatchLoader`."""
    if isinstance(split.images, ImageFiles):
        workers = choose_workers(workers, torch.get_num_threads())
        return StreamLoader(split, batch_size, workers=workers, **kwargs)
    return BatchLoader(split, batch_size, **kwargs)


__all__ = ["NO_BOX", "BoxReplay", "StreamLoader", "loader_for"]
