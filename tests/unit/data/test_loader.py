"""The in-memory batch pipeline: determinism per (seed, epoch), sharding, normalization."""

import pytest
import torch

from kdistill.data import BatchLoader, CropFlip, Split


def split(n=10):
    images = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2)
    return Split(images, torch.arange(n) % 3, torch.arange(100, 100 + n))


def collect(loader, epoch):
    loader.set_epoch(epoch)
    return [(b.sample_ids.tolist(), None if b.views is None else b.views.tolist()) for b in loader]


def test_order_and_views_depend_only_on_seed_and_epoch():
    make = lambda: BatchLoader(split(), 4, shuffle=True, augment=CropFlip(1, True), seed=7)  # noqa: E731
    a, b = make(), make()
    assert collect(a, 3) == collect(b, 3)
    assert collect(a, 3) != collect(a, 4)
    ids = [i for batch, _ in collect(a, 2) for i in batch]
    assert sorted(ids) == list(range(100, 110))  # every sample once per epoch
    assert len(a) == 3


def test_unshuffled_order_and_drop_last():
    loader = BatchLoader(split(), 4)
    assert [ids for ids, _ in collect(loader, 0)] == [
        [100, 101, 102, 103],
        [104, 105, 106, 107],
        [108, 109],
    ]
    assert len(BatchLoader(split(), 4, drop_last=True)) == 2


def test_batches_carry_labels_ids_and_unit_scaled_inputs():
    loader = BatchLoader(split(), 10)
    batch = next(iter(loader))
    assert batch.inputs.dtype == torch.float32
    assert batch.inputs[1, 0, 0, 0].item() == pytest.approx(4 / 255)
    assert batch.targets.tolist() == [i % 3 for i in range(10)]
    normalized = next(iter(BatchLoader(split(), 10, mean=[0.5], std=[0.25])))
    torch.testing.assert_close(normalized.inputs, (batch.inputs - 0.5) / 0.25)


def test_ranks_share_each_global_batch():
    whole = collect(BatchLoader(split(12), 4, shuffle=True, seed=1), 0)
    parts = [
        collect(BatchLoader(split(12), 4, shuffle=True, seed=1, rank=r, world_size=2), 0)
        for r in (0, 1)
    ]
    for b, (ids, _) in enumerate(whole):
        assert parts[0][b][0] + parts[1][b][0] == ids


def test_bad_settings():
    with pytest.raises(ValueError, match="multiple of 2"):
        BatchLoader(split(), 3, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(split(), 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split(), 0)
