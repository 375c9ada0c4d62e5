"""The data's channel statistics: exact, and the same with any number of threads (they key
teacher caches)."""

import numpy as np
import pytest
import torch

from kdistill.data.bundle import channel_stats


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_channel_statistics_do_not_depend_on_threads(dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3000, 3, 9, 9), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = channel_stats(images)
        torch.set_num_threads(2)
        two = channel_stats(images)
    finally:
        torch.set_num_threads(before)
    assert one == two
    x = images.double() / (255 if dtype == torch.uint8 else 1)
    np.testing.assert_allclose(one[0], x.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(one[1], x.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-9)
