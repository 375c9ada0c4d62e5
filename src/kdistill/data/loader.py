"""The in-memory batch pipeline: index batches, gather, augment, normalize; no per-sample work.

A ``BatchLoader`` holds one split's tensors (on the training device when that is a GPU, so a
batch is a few indexing ops there) and yields :class:`Batch` es. Shuffling and augmentation
draw from a generator seeded by ``(seed, epoch)``, so an epoch is the same whether or not the
run was interrupted before it, and every process of a data-parallel run agrees on the order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from kdistill.data.augment import Augment
from kdistill.data.bundle import to_unit_float
from kdistill.data.sources import Split
from kdistill.types import Batch

ViewSampler = Callable[[Tensor, torch.Generator], Tensor]
"""``(sample_ids, generator) -> view ids``: which augmentation view each sample gets."""


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch, stream)`` only."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(
        2, np.uint64
    )
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class BatchLoader:
    """Batches of one in-memory split.

    Args:
        split: the samples.
        batch_size: samples per batch across all processes (the global batch).
        device: where batches are produced.
        mean, std: per-channel statistics to standardize with, or ``None`` to leave inputs in
            [0, 1].
        shuffle: a new order every epoch (training) or the split's order (evaluation).
        augment: a :class:`CropFlip` to apply, or ``None`` (crops of the files,
            :class:`ResizedCropFlip`, are the streaming loader's).
        view_sampler: picks each sample's view; default uniform over ``augment``'s views.
        seed: with the epoch, determines order and views.
        drop_last: drop a final batch smaller than ``batch_size``.
        rank, world_size: this process's share of every global batch (data-parallel runs).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shuffle: bool = False,
        augment: Augment | None = None,
        view_sampler: ViewSampler | None = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} does not split evenly over {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        if augment is not None and split.images.dim() != 4:
            raise ValueError("augmentation needs image batches (N, C, H, W)")
        self.device = torch.device(device)
        self._hold(split, augment)
        self.labels = split.labels.to(self.device)
        self.ids = split.ids
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.view_sampler = view_sampler or (augment.random_views if augment is not None else None)
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        shape = (1, -1, 1, 1) if split.images.dim() == 4 else (1, -1)
        self._mean = None if mean is None else torch.tensor(mean, device=self.device).view(shape)
        self._std = None if std is None else torch.tensor(std, device=self.device).view(shape)

    def _hold(self, split: Split, augment: Augment | None) -> None:
        if not isinstance(split.images, Tensor) or (augment is not None and augment.on_files):
            raise ValueError(
                "these images are read from files (streamed, or cropped from the full-resolution "
                "file): use StreamLoader (data.loader_for picks it)"
            )
        # On a GPU the whole split lives there: a batch is then an index + a cast, no copies.
        self.images = split.images.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and views the next iteration yields."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_plan(self) -> tuple[Tensor, Tensor | None]:
        """This epoch's sample order (positions in the split) and the view of each position."""
        gen = epoch_generator(self.seed, self.epoch)
        order = (
            torch.randperm(self.num_samples, generator=gen)
            if self.shuffle
            else torch.arange(self.num_samples)
        )
        views = None
        if self.augment is not None:
            views = self.view_sampler(self.ids[order], gen)  # type: ignore[misc]
        return order, views

    def planned_batches(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """This epoch's batches for this process: ``(positions, views)`` of each."""
        order, views = self.epoch_plan()
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            # This process's contiguous share of the global batch.
            share = -(-(hi - lo) // self.world_size)
            lo, hi = lo + self.rank * share, min(lo + (self.rank + 1) * share, hi)
            yield order[lo:hi], None if views is None else views[lo:hi]

    def __iter__(self) -> Iterator[Batch]:
        for positions, views in self.planned_batches():
            yield self.make_batch(positions, views)

    def make_batch(self, positions: Tensor, views: Tensor | None) -> Batch:
        """The batch of the samples at ``positions`` (indices into the split), seen as ``views``."""
        return self.finish_batch(positions, views, self.images[positions.to(self.device)])

    def finish_batch(self, positions: Tensor, views: Tensor | None, images: Tensor) -> Batch:
        """A :class:`Batch` from the uint8 or [0, 1] ``images`` of the samples at ``positions``:
        on the device, in [0, 1], batch augmentation applied, standardized."""
        index = positions.to(self.device)
        x = to_unit_float(images.to(self.device, non_blocking=True))
        if self.augment is not None and views is not None and not self.augment.on_files:
            x = self.augment.apply(x, views)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return Batch(
            inputs=x,
            targets=self.labels[index],
            sample_ids=self.ids[positions],
            views=None if views is None else views.clone(),
        )
