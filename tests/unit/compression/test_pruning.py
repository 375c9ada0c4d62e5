"""Pruning math: AGP, exact sparsity, monotone masks, channel shapes."""

import pytest
import torch
from torch import nn

from kdistill.compression.pruning import (
    MaskPruner,
    agp_sparsity,
    apply_layer_shapes,
    channel_prune,
    layer_shapes,
    sparsity_report,
    step_ratio,
)
from kdistill.models import build_model


def test_agp_formula():
    # Zhu and Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert agp_sparsity(0, initial=0.0, final=0.8, start=0, span=10) == 0.0
    assert agp_sparsity(5, initial=0.0, final=0.8, start=0, span=10) == pytest.approx(
        0.8 - 0.8 * 0.5**3
    )
    assert agp_sparsity(10, initial=0.0, final=0.8, start=0, span=10) == pytest.approx(0.8)
    assert agp_sparsity(20, initial=0.1, final=0.8, start=0, span=10) == pytest.approx(0.8)
    assert agp_sparsity(3, initial=0.1, final=0.8, start=5, span=10) == pytest.approx(0.1)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 33), nn.ReLU(), nn.Linear(33, 7))


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_exact_sparsity_and_monotone_masks(scope):
    model = mlp()
    names = ["0.weight", "2.weight"]
    pruner = MaskPruner(names, scope)
    previous = None
    for target in (0.3, 0.55, 0.8):
        pruner.prune_to(model, target)
        zeros = {n: int((dict(model.named_parameters())[n] == 0).sum()) for n in names}
        if scope == "global":
            assert sum(zeros.values()) == round(target * (330 + 231))
        else:
            assert zeros == {"0.weight": round(target * 330), "2.weight": round(target * 231)}
        if previous is not None:  # once pruned, always pruned
            for n in names:
                assert bool((~pruner.masks[n] | previous[n]).all()) or bool(
                    (pruner.masks[n] <= previous[n]).all()
                )
        previous = {n: m.clone() for n, m in pruner.masks.items()}


def test_masks_hold_through_training():
    model = mlp()
    pruner = MaskPruner(["0.weight"], "global")
    pruner.prune_to(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 10)).sum().backward()
        opt.step()
        pruner.apply(model)
    assert int((model[0].weight == 0).sum()) == 165
    report = sparsity_report(model, ["0.weight"])
    assert (
        report["pruned_weights_sparsity"] == 0.5
        and report["params_nonzero"] == sum(p.numel() for p in model.parameters()) - 165
    )


def test_mask_state_round_trip():
    model = mlp()
    pruner = MaskPruner(["0.weight"], "global")
    pruner.prune_to(model, 0.4)
    other = MaskPruner(["0.weight"], "global")
    other.load_state_dict(pruner.state_dict())
    assert torch.equal(other.masks["0.weight"], pruner.masks["0.weight"])
    with pytest.raises(ValueError, match="no parameter"):
        MaskPruner(["nope.weight"]).prune_to(model, 0.1)


def test_step_ratio_reaches_the_total():
    kept = 1.0
    for step in (1, 2, 3):
        kept *= 1 - step_ratio(0.6, step, 3)
    assert kept == pytest.approx(0.4)


@pytest.mark.parametrize("arch", ["lenet5", "resnet20_cifar"])
def test_channel_pruning_and_shape_replay(arch):
    model = build_model(arch, 10, (1, 28, 28))
    before = sum(p.numel() for p in model.parameters())
    first_last = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    channel_prune(model, (1, 28, 28), ratio=0.5, ignore=[first_last[0], first_last[-1]])
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.5 * before
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    fresh = apply_layer_shapes(build_model(arch, 10, (1, 28, 28)), layer_shapes(model))
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(ValueError, match="no module"):
        channel_prune(model, (1, 28, 28), ratio=0.5, ignore=["nothing"])
