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


def group_criteria(weight: Tensor, groups: str, criteria: str) -> Tensor:
    """Each group's size for thresholding: the mean absolute weight (``mean_abs``, Distiller's
    Mean_Abs) or the largest absolute weight (``max``)."""
    dim = {"filters": 0, "channels": 1}[groups]
    flat = weight.detach().abs().float().transpose(0, dim).flatten(1)
    return flat.mean(1) if criteria == "mean_abs" else flat.amax(1)


def threshold_mask(weight: Tensor, groups: str | None, criteria: str, threshold: float) -> Tensor:
    """A mask of ``weight``'s shape that zeroes the groups whose criterion is at or below
    ``threshold`` (Distiller keeps a group when its criterion is greater); ``groups=None``:
    single weights by magnitude (an L1 penalty's threshold)."""
    if groups is None:
        return weight.detach().abs() > threshold
    dim = {"filters": 0, "channels": 1}[groups]
    keep = group_criteria(weight, groups, criteria) > threshold
    shape = [1] * weight.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(weight).clone()
