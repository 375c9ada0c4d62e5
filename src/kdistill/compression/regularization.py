"""Weight penalties that push weights (L1) or whole filters (group lasso) to zero."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def l1_penalty(weights: Sequence[Tensor]) -> Tensor:
    """``sum |w|`` over the given weights."""
    return torch.stack([w.abs().sum() for w in weights]).sum()


def group_lasso_penalty(weights: Sequence[Tensor], groups: str = "filters") -> Tensor:
    """``sum_g ||w_g||_2`` with one group per output filter (Conv2d) or output neuron (Linear),
    or with ``groups="channels"`` per input channel (column): it drives whole groups to exactly
    zero, which structured pruning can then remove."""
    dim = {"filters": 0, "channels": 1}[groups]
    return torch.stack([w.transpose(0, dim).flatten(1).norm(dim=1).sum() for w in weights]).sum()


def weights_of(model: nn.Module, layer_names: Sequence[str]) -> list[Tensor]:
    """The weight tensors of the named layers (looked up by parameter name, so exported QAT
    graphs work too)."""
    params = dict(model.named_parameters())
    return [params[f"{name}.weight"] for name in layer_names if f"{name}.weight" in params]
