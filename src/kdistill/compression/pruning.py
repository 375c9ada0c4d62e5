"""Pruning: unstructured magnitude masks (exact sparsity, AGP schedule) and structured channel
pruning with torch-pruning, plus recording/replaying the pruned architecture.

Unstructured pruning holds explicit masks keyed by parameter name and re-applies them after every
optimizer step, instead of ``torch.nn.utils.prune``'s re-parametrization: that works the same on
eager modules and on the exported graphs of quantization-aware training (where prune hooks never
run), and it hits the requested sparsity exactly (``prune.*(amount=float)`` prunes a fraction
of the *remaining* weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.extras import require
from kdistill.policies import agp_sparsity  # noqa: F401  (the schedule math lives with the policy)

# The dimension whose slices form a group: filters are output channels (dim 0: a Conv2d's
# filters, a Linear's rows), channels input channels (dim 1: a Conv2d's input channels, a
# Linear's columns).
GROUP_DIMS = {"filters": 0, "channels": 1}


def group_norms(weight: Tensor, structure: str) -> Tensor:
    """The L1 norm of each filter or channel of ``weight`` (Distiller's ranking criterion)."""
    dim = GROUP_DIMS[structure]
    return weight.detach().abs().float().transpose(0, dim).flatten(1).sum(1)


def expand_groups(keep: Tensor, weight: Tensor, structure: str) -> Tensor:
    """A per-group keep vector as a mask of ``weight``'s shape."""
    dim = GROUP_DIMS[structure]
    shape = [1] * weight.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(weight).clone()


class MaskPruner:
    """Magnitude masks over the weights ``param_names`` of a model.

    Args:
        param_names: the weights to prune (``"features.3.weight"``, ...).
        scope: ``"global"`` (one threshold over all of them) or ``"per_layer"``.
        structure: ``"elements"`` (single weights), or ``"filters"`` / ``"channels"`` (whole
            groups, ranked by L1 norm within each layer; needs ``per_layer``).
    """

    def __init__(
        self,
        param_names: Sequence[str],
        scope: str = "global",
        structure: str = "elements",
        leader: bool = False,
    ) -> None:
        if scope not in ("global", "per_layer"):
            raise ValueError(f"scope must be global or per_layer, got {scope!r}")
        if structure != "elements" and (structure not in GROUP_DIMS or scope != "per_layer"):
            raise ValueError(
                f"structure must be elements, or filters/channels with per_layer scope; got "
                f"{structure!r} with {scope!r}"
            )
        self.param_names = list(param_names)
        self.scope = scope
        self.structure = structure
        self.leader = leader  # the first weight's ranking chooses the groups of every weight
        self.masks: dict[str, Tensor] = {}

    def _params(self, model: nn.Module) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ValueError(f"pruning: the model has no parameter(s) {missing}")
        return {n: params[n] for n in self.param_names}

    @torch.no_grad()
    def prune_to(self, model: nn.Module, sparsity: float) -> None:
        """Masks with exactly ``round(sparsity * N)`` zeros (per layer, or over all layers);
        weights pruned earlier stay pruned (they are the first to go)."""
        params = self._params(model)
        if self.structure != "elements":
            self._prune_groups(params, sparsity)
            self.apply(model)
            return
        scores = {}
        for name, p in params.items():
            s = p.detach().abs().float().flatten()
            if name in self.masks:
                s = torch.where(
                    self.masks[name].flatten().to(s.device), s, torch.full_like(s, -1.0)
                )
            scores[name] = s
        groups = [list(params)] if self.scope == "global" else [[n] for n in params]
        for names in groups:
            flat = torch.cat([scores[n] for n in names])
            k = round(sparsity * flat.numel())
            keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
            if k > 0:
                keep[torch.topk(flat, k, largest=False).indices] = False
            offset = 0
            for n in names:
                size = scores[n].numel()
                self.masks[n] = keep[offset : offset + size].view_as(params[n]).cpu()
                offset += size
        self.apply(model)

    @torch.no_grad()
    def prune_below(self, model: nn.Module, threshold: float, in_std: bool = False) -> None:
        """Mask every weight whose magnitude is at most ``threshold`` (times the layer's weight
        standard deviation with ``in_std``); weights pruned earlier stay pruned."""
        for name, p in self._params(model).items():
            w = p.detach().float()
            limit = threshold * float(w.std()) if in_std else threshold
            keep = (w.abs() > limit).cpu()
            if name in self.masks:
                keep &= self.masks[name]
            self.masks[name] = keep
        self.apply(model)

    def _prune_groups(self, params: Mapping[str, Tensor], sparsity: float) -> None:
        """Per layer, ``round(sparsity * groups)`` whole filters or channels with the smallest
        L1 norms masked (groups pruned earlier stay pruned). With ``leader``, the first layer's
        choice is every layer's (Distiller's ``group_dependency: Leader``: layers whose filters
        are summed, as the last convolutions of residual blocks, lose the same filters, so that
        thinning can remove them)."""
        chosen: Tensor | None = None
        for name, p in params.items():
            if chosen is not None:
                if chosen.numel() != p.shape[GROUP_DIMS[self.structure]]:
                    raise ValueError(
                        f"pruning: group_dependency leader: {name} has "
                        f"{p.shape[GROUP_DIMS[self.structure]]} {self.structure}, its leader "
                        f"{self.param_names[0]} {chosen.numel()}; a leader's layers must have as "
                        "many"
                    )
                self.masks[name] = expand_groups(chosen.to(p.device), p, self.structure).cpu()
                continue
            norms = group_norms(p, self.structure)
            if name in self.masks:
                kept = group_norms(self.masks[name].to(p.device).float(), self.structure) > 0
                norms = torch.where(kept, norms, torch.full_like(norms, -1.0))
            keep = torch.ones(norms.numel(), dtype=torch.bool, device=norms.device)
            k = min(round(sparsity * norms.numel()), norms.numel() - 1)  # one group always stays
            if k > 0:
                keep[torch.topk(norms, k, largest=False).indices] = False
            self.masks[name] = expand_groups(keep, p, self.structure).cpu()
            if self.leader:
                chosen = keep

    def refresh(self, model: nn.Module) -> None:
        """Masks whose weight changed shape (its zeroed filters were removed) are taken again
        from the weight's zeros: the pruned weights are exactly zero, so this keeps them."""
        for name, p in self._params(model).items():
            if name in self.masks and self.masks[name].shape != p.shape:
                self.masks[name] = (p.detach() != 0).cpu()

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights (after every optimizer step they may have moved)."""
        if not self.masks:
            return
        for name, p in self._params(model).items():
            if name in self.masks:
                p.mul_(self.masks[name].to(p.device, p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {
            "param_names": list(self.param_names),
            "structure": self.structure,
            "masks": {n: m.clone() for n, m in self.masks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.param_names = list(state["param_names"])
        self.structure = str(state.get("structure", "elements"))
        self.masks = {n: m.bool() for n, m in state["masks"].items()}


def sparsity_report(model: nn.Module, param_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-layer and total fraction of exactly-zero weights of Conv2d/Linear layers (or of
    ``param_names``), with total and non-zero parameter counts of the whole model."""
    params = dict(model.named_parameters())
    names = (
        list(param_names)
        if param_names is not None
        else [n for n, p in params.items() if n.endswith("weight") and p.dim() in (2, 4)]
    )
    layers = {}
    zeros = total = 0
    for n in names:
        p = params[n]
        z = int((p == 0).sum())
        layers[n] = z / p.numel()
        zeros += z
        total += p.numel()
    all_params = sum(p.numel() for p in params.values())
    all_zeros = sum(int((p == 0).sum()) for p in params.values())
    return {
        "layers": layers,
        "pruned_weights_sparsity": zeros / total if total else 0.0,
        "params_total": all_params,
        "params_nonzero": all_params - all_zeros,
    }


# ----------------------------------------------------------------------------- structured


def channel_prune(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    ratio: float,
    ignore: Sequence[str],
    round_to: int | None = None,
) -> None:
    """Remove ``ratio`` of the channels of every prunable layer group (in place), choosing the
    groups with the smallest L2 magnitude; residual-coupled layers are pruned consistently."""
    tp = require("torch_pruning", "prune")

    modules = dict(model.named_modules())
    missing = [n for n in ignore if n not in modules]
    if missing:
        raise ValueError(f"channel pruning: no module(s) named {missing} to leave alone")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pruner = tp.pruner.BasePruner(
        model,
        torch.zeros(1, *input_shape, device=device),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        iterative_steps=1,
        round_to=round_to,
        ignored_layers=[modules[n] for n in ignore],
    )
    pruner.step()
    model.train(was_training)


def remove_zeroed_groups(
    model: nn.Module, input_shape: tuple[int, ...], layers: Sequence[str], structure: str
) -> dict[str, str]:
    """Remove the all-zero filters (or input channels) of ``layers`` from ``model`` in place,
    with the layers that depend on them (the next layer's inputs, BatchNorm), as Distiller's
    thinning does: removing filters also removes the next layer's matching input channels and
    the BatchNorm entries between; removing input channels also removes the filters that feed
    them. Groups coupled with other layers' non-zero weights (filters summed with a residual)
    are kept: removing them would throw trained weights away.

    Returns:
        layer name -> what happened to it, for the log.
    """
    tp = require("torch_pruning", "prune")

    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros(1, *input_shape, device=device)
    )
    dim = GROUP_DIMS[structure]
    outcome: dict[str, str] = {}
    for name in layers:
        layer = modules[name]
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            outcome[name] = f"kept: a {type(layer).__name__}, not a Conv2d or Linear"
            continue
        zero = (group_norms(layer.weight, structure) == 0).nonzero().flatten().tolist()
        total = layer.weight.shape[dim]
        if not zero or len(zero) == total:
            outcome[name] = "nothing to remove" if not zero else "kept: every group is zero"
            continue
        conv = isinstance(layer, nn.Conv2d)
        fn = {
            (True, 0): tp.prune_conv_out_channels, (True, 1): tp.prune_conv_in_channels,
            (False, 0): tp.prune_linear_out_channels, (False, 1): tp.prune_linear_in_channels,
        }[(conv, dim)]  # fmt: skip
        group = graph.get_pruning_group(layer, fn, idxs=zero)
        coupled = _nonzero_coupled(group, layer, dim, names, tp)
        if coupled:
            outcome[name] = (
                f"kept {len(zero)} zeroed {structure}: coupled with non-zero weights of "
                f"{', '.join(coupled)}"
            )
            continue
        if not graph.check_pruning_group(group):
            outcome[name] = f"kept {len(zero)} zeroed {structure}: torch-pruning cannot remove them"
            continue
        group.prune()
        outcome[name] = f"removed {len(zero)} of {total} {structure}"
    model.train(was_training)
    return outcome


def _nonzero_coupled(
    group: Any, layer: nn.Module, dim: int, names: Mapping[nn.Module, str], tp: Any
) -> list[str]:
    """Other layers from which the group would cut the same kind of slice (filters coupled
    through a residual sum; other readers of the same input channels) where it is not zero:
    removing those would throw away trained weights, not zeros."""
    same_cut = (
        (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        if dim == 0
        else (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    )
    found = []
    for dep, idxs in group:
        module = dep.target.module
        if module is layer or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if dep.handler not in same_cut:
            continue
        cut = module.weight.detach().transpose(0, dim)[list(idxs)]
        if bool(cut.abs().sum() != 0):
            found.append(names.get(module, type(module).__name__))
    return found


def step_ratio(total_ratio: float, step: int, steps: int) -> float:
    """The fraction of the *current* channels to remove at ``step`` (1-based) so that after
    ``step`` steps ``total_ratio * step / steps`` of the original channels are gone."""
    before = total_ratio * (step - 1) / steps
    after = total_ratio * step / steps
    return 1.0 - (1.0 - after) / (1.0 - before)


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel counts of every Conv2d, Linear and BatchNorm (what structured pruning changes)."""
    shapes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"features": m.num_features}
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """Replace layers of a freshly built model with ones of the recorded channel counts, so a
    pruned checkpoint's weights load into it (safely, with no pickled model)."""
    for name, shape in shapes.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                shape["in"], shape["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                shape["groups"], old.bias is not None, old.padding_mode,
            )  # fmt: skip
        elif isinstance(old, nn.Linear):
            new = nn.Linear(shape["in"], shape["out"], bias=old.bias is not None)
        elif isinstance(old, nn.modules.batchnorm._BatchNorm):
            new = type(old)(
                shape["features"], old.eps, old.momentum, old.affine, old.track_running_stats
            )
        else:
            raise ValueError(f"recorded shape for {name!r}, which is a {type(old).__name__}")
        setattr(parent, child, new)
    return model
