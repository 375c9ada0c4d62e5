"""The weight penalties, against their definitions."""

import torch

from kdistill.compression.regularization import group_lasso_penalty, l1_penalty


def test_penalties_match_their_definitions():
    torch.manual_seed(0)
    conv, fc = torch.randn(4, 3, 2, 2), torch.randn(5, 6)
    assert torch.allclose(l1_penalty([conv, fc]), conv.abs().sum() + fc.abs().sum())
    filters = sum(conv[i].norm() for i in range(4)) + sum(fc[i].norm() for i in range(5))
    assert torch.allclose(group_lasso_penalty([conv, fc]), filters)
    channels = sum(conv[:, j].norm() for j in range(3)) + sum(fc[:, j].norm() for j in range(6))
    assert torch.allclose(group_lasso_penalty([conv, fc], "channels"), channels)
