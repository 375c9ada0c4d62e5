"""Shared test settings: small thread count so the suite behaves the same on 2 cores."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
