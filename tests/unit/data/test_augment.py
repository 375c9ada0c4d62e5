"""Batched crop/flip views against a per-sample reference."""

import pytest
import torch
import torch.nn.functional as F

from kdistill.data import CropFlip


def reference(image, padding, dy, dx, flip):
    h, w = image.shape[-2:]
    crop = F.pad(image, (padding,) * 4)[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize(("padding", "hflip"), [(2, True), (1, False), (0, True), (4, True)])
def test_every_view_matches_the_reference(padding, hflip):
    aug = CropFlip(padding, hflip)
    assert aug.num_views == (2 * padding + 1) ** 2 * (2 if hflip else 1)
    views = torch.arange(aug.num_views)
    images = torch.rand(1, 2, 5, 6).expand(aug.num_views, -1, -1, -1)
    out = aug.apply(images, views)
    seen = set()
    for v in range(aug.num_views):
        dy, dx, flip = (t[v].item() for t in aug.decode(views))
        assert torch.equal(out[v], reference(images[v], padding, dy, dx, flip))
        seen.add((dy, dx, flip))
    assert len(seen) == aug.num_views  # every view is distinct


def test_identity_view_and_replay():
    aug = CropFlip(2, True)
    x = torch.rand(4, 1, 7, 7)
    assert torch.equal(aug.apply(x, torch.full((4,), aug.identity_view)), x)
    views = aug.random_views(torch.arange(4), torch.Generator().manual_seed(1))
    assert torch.equal(aug.apply(x, views), aug.apply(x, views.clone()))


def test_random_views_cover_the_space_uniformly():
    aug = CropFlip(1, True)
    views = aug.random_views(torch.zeros(18000), torch.Generator().manual_seed(0))
    counts = torch.bincount(views, minlength=aug.num_views).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_bad_inputs():
    with pytest.raises(ValueError, match="padding"):
        CropFlip(-1, False)
    aug = CropFlip(1, False)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        aug.apply(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="view ids"):
        aug.apply(torch.zeros(1, 1, 3, 3), torch.tensor([9]))
