"""Pruning math: AGP, exact sparsity, monotone masks, channel shapes."""

import pytest
import torch
from torch import nn

from kdistill.compression.pruning import (
    MaskPruner,
    agp_sparsity,
    apply_layer_shapes,
    channel_prune,
    group_norms,
    layer_shapes,
    remove_zeroed_groups,
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


@pytest.mark.parametrize(("structure", "dim"), [("filters", 0), ("channels", 1)])
def test_structured_masks_prune_whole_groups_by_l1(structure, dim):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    pruner = MaskPruner(["0.weight", "3.weight"], "per_layer", structure)
    norms = {
        n: group_norms(p, structure) for n, p in model.named_parameters() if n.endswith("weight")
    }
    pruner.prune_to(model, 0.5)
    for name in ("0.weight", "3.weight"):
        weight = dict(model.named_parameters())[name]
        zero = group_norms(weight, structure) == 0
        assert int(zero.sum()) == round(0.5 * weight.shape[dim])
        # the groups with the smallest L1 norms went
        assert set(zero.nonzero().flatten().tolist()) == set(
            norms[name].argsort()[: int(zero.sum())].tolist()
        )
    pruner.prune_to(model, 0.75)  # groups pruned before stay pruned
    weight = model[0].weight
    assert int((group_norms(weight, structure) == 0).sum()) == (6 if dim == 0 else 3)
    with pytest.raises(ValueError, match="per_layer"):
        MaskPruner(["0.weight"], "global", structure)


def test_removing_zeroed_filters_keeps_the_function_and_spares_coupled_ones():
    torch.manual_seed(0)
    model = build_model("resnet20_cifar", 10, (3, 32, 32))
    names = ["layer1.0.conv1", "layer1.0.conv2", "layer2.1.conv1"]
    MaskPruner([f"{n}.weight" for n in names], "per_layer", "filters").prune_to(model, 0.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    before, params = model(x), sum(p.numel() for p in model.parameters())
    outcome = remove_zeroed_groups(model, (3, 32, 32), names, "filters")
    assert outcome["layer1.0.conv1"] == "removed 8 of 16 filters"
    assert model.layer1[0].conv1.out_channels == 8 and model.layer1[0].conv2.in_channels == 8
    assert model.layer1[0].bn1.num_features == 8
    # conv2's filters are summed with the residual path: removing them would cut non-zero
    # filters of the other blocks, so they stay
    assert outcome["layer1.0.conv2"].startswith("kept 8 zeroed filters: coupled")
    assert model.layer2[1].conv1.out_channels == 16
    assert sum(p.numel() for p in model.parameters()) < params
    # fresh BatchNorm maps a zero filter to zero, so the function is unchanged
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_removing_zeroed_channels_removes_the_filters_feeding_them():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )  # fmt: skip
    pruner = MaskPruner(["2.weight"], "per_layer", "channels")
    pruner.prune_to(model, 0.25)
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    assert remove_zeroed_groups(model, (1, 8, 8), ["2"], "channels") == {
        "2": "removed 2 of 8 channels"
    }
    assert model[0].out_channels == 6 and model[2].in_channels == 6
    torch.testing.assert_close(model(x), before)
    pruner.refresh(model)  # the mask now has the layer's new shape
    assert pruner.masks["2.weight"].shape == model[2].weight.shape


def test_threshold_pruning_absolute_and_in_standard_deviations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    w0, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    pruner = MaskPruner(["0.weight", "2.weight"], "per_layer")
    pruner.prune_below(model, 0.1)
    for layer, before in ((model[0], w0), (model[2], w2)):
        assert torch.equal(layer.weight == 0, before.abs() <= 0.1)
    model = nn.Sequential(nn.Linear(20, 30))
    w = model[0].weight.detach().clone()
    pruner = MaskPruner(["0.weight"], "per_layer")
    pruner.prune_below(model, 0.5, in_std=True)  # Distiller's sensitivity: 0.5 std
    assert torch.equal(model[0].weight == 0, w.abs() <= 0.5 * w.std())
    with torch.no_grad():
        model[0].weight.add_(1.0)  # pruned weights that moved are zeroed again, never revived
    pruner.prune_below(model, 0.5, in_std=True)
    assert bool((model[0].weight[w.abs() <= 0.5 * w.std()] == 0).all())


def test_a_leader_chooses_the_filters_of_every_layer():
    """Distiller's group_dependency: Leader: layers whose filters are summed lose the same ones,
    the ones the first layer's ranking chooses."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 1), torch.nn.Conv2d(2, 6, 1))
    with torch.no_grad():
        model[0].weight.copy_((torch.arange(6.0) + 1).view(6, 1, 1, 1).expand(6, 2, 1, 1))
        model[1].weight.copy_((6.0 - torch.arange(6.0)).view(6, 1, 1, 1).expand(6, 2, 1, 1))

    def zero_filters(m):
        return [i for i in range(6) if (m.weight[i] == 0).all()]

    MaskPruner(["0.weight", "1.weight"], "per_layer", "filters", leader=True).prune_to(model, 0.5)
    assert zero_filters(model[0]) == zero_filters(model[1]) == [0, 1, 2]
    independent = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 1), torch.nn.Conv2d(2, 6, 1))
    with torch.no_grad():
        independent[1].weight.copy_((6.0 - torch.arange(6.0)).view(6, 1, 1, 1).expand(6, 2, 1, 1))
    MaskPruner(["1.weight"], "per_layer", "filters").prune_to(independent, 0.5)
    assert zero_filters(independent[1]) == [3, 4, 5]  # its own ranking
    uneven = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 1), torch.nn.Conv2d(2, 4, 1))
    with pytest.raises(ValueError, match="a leader's layers must have as many"):
        MaskPruner(["0.weight", "1.weight"], "per_layer", "filters", leader=True).prune_to(
            uneven, 0.5
        )
