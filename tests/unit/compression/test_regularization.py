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


def _stub_trainer(model):
    from types import SimpleNamespace

    return SimpleNamespace(student=model, replace_student=lambda m: None)


def test_a_thresholded_group_lasso_zeroes_the_small_groups_after_every_step():
    """Distiller's GroupLassoRegularizer with threshold_criteria: a group whose mean |w| (or
    max |w|) is at or below the threshold is zeroed; with keep_mask the window's last zeros
    stay zero afterwards, otherwise they may grow back."""
    from kdistill.compression.callbacks import Regularization
    from kdistill.policies import RegularizationPolicy

    def model():
        m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1, bias=False))
        with torch.no_grad():
            m[0].weight.copy_(torch.tensor([0.01, -0.02, 0.5, 0.6, 0.0, 0.05]).view(3, 2, 1, 1))
        return m

    for criteria, zeroed in (("mean_abs", [True, False, True]), ("max", [True, False, False])):
        policy = RegularizationPolicy(
            type="group_lasso", weight=1e-3, threshold=0.03, threshold_criteria=criteria,
            ending_epoch=2, keep_mask=True,
        )  # fmt: skip
        net, cb = model(), Regularization(policy, 0, epochs=4)
        trainer = _stub_trainer(net)
        cb.on_epoch_start(trainer, 0)
        cb.on_step_end(trainer, 0)
        w = net[0].weight.detach().flatten(1)
        assert [bool((w[i] == 0).all()) for i in range(3)] == zeroed, criteria
    # keep_mask: the zeros of the window's last epoch (1) hold in the epochs after it
    cb.on_step_end(trainer, 1)
    cb.on_epoch_end(trainer, 1, {})
    with torch.no_grad():
        net[0].weight.add_(1.0)  # an optimizer step that would revive every weight
    cb.on_epoch_start(trainer, 2)
    assert not cb.active
    cb.on_step_end(trainer, 2)
    w = net[0].weight.detach().flatten(1)
    assert (w[0] == 0).all() and (w[1] != 0).all() and (w[2] != 0).all()
    restored = Regularization(policy, 0, epochs=4)
    restored.load_state_dict(cb.state_dict())
    assert set(restored.kept) == {"0.weight"}


def test_thinning_removes_every_zeroed_filter_at_its_epochs_only():
    from kdistill.compression.callbacks import Thinning
    from kdistill.policies import ThinningPolicy

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight[1].zero_()
        net[0].bias[1].zero_()
        net[3].weight[4].zero_()
        net[7].weight[0].zero_()  # a Linear row: Distiller thins 4-D weights only
    thinning = Thinning(ThinningPolicy(epochs=(1,)), (1, 8, 8), log=lambda _: None)
    trainer = _stub_trainer(net)
    thinning.on_epoch_start(trainer, 0)
    assert net[0].out_channels == 4  # not its epoch
    thinning.on_epoch_start(trainer, 1)
    assert (net[0].out_channels, net[1].num_features, net[3].in_channels) == (3, 3, 3)
    assert (net[3].out_channels, net[7].in_features, net[7].out_features) == (5, 5, 3)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert thinning.done == [1] and thinning.changed_at == 1 and thinning.shapes is not None
