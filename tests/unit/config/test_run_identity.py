"""A run's identity (its directory's name) changes only when what it computes does: settings
added later hash as before while at their defaults, and every shipped recipe keeps the identity
it had (recorded below) so that `--resume` and sweeps find their runs across upgrades."""

import pytest

from kdistill.config import apply_overrides, load_config
from kdistill.experiment.rundir import run_identity

# (recipe, identity before the streaming pipeline and kd.teacher_precision: auto)
RECORDED = [
    ("cifar10/preact_resnet110", "e810149389"),
    ("cifar10/preact_resnet20-distill", "410447c8a9"),  # distillation
    ("cifar10/preact_resnet20", "14cc857e54"),
    ("cifar10/preact_resnet32", "8b179aadca"),
    ("cifar10/preact_resnet44", "91f266f6c9"),
    ("cifar10/preact_resnet56", "a273455f4b"),
    ("cifar10/resnet18-channels50-distill", "7b803b2a7d"),  # distillation
    ("cifar10/resnet18-distill", "c024853066"),  # distillation
    ("cifar10/resnet18-scratch", "3bcb087748"),
    ("cifar10/resnet18-w4a8-distill", "5a0869bf6b"),  # distillation
    ("cifar10/resnet34-teacher", "f5e725bd27"),
    ("digits/distill", "0e19c65c4c"),  # distillation
    ("digits/scratch", "a79e5dc8a3"),
    ("digits/teacher", "ef4cdc493e"),
    ("fashion-mnist/hinton-mlp-distill", "5d6117b217"),  # distillation
    ("fashion-mnist/hinton-mlp-scratch", "2b689fc36d"),
    ("fashion-mnist/hinton-mlp-teacher", "0833991680"),
    ("fashion-mnist/lenet5-agp80-distill", "53a60d01af"),  # distillation
    ("fashion-mnist/lenet5-agp80", "4a9b6c026b"),
    ("fashion-mnist/lenet5-channels50-distill", "4494f409fe"),  # distillation
    ("fashion-mnist/lenet5-channels50", "10325a818d"),
    ("fashion-mnist/lenet5-distill-resnet18", "15cb5f09d1"),  # distillation
    ("fashion-mnist/lenet5-distill", "48d6b1df74"),  # distillation
    ("fashion-mnist/lenet5-scratch", "4dfb8852c3"),
    ("fashion-mnist/lenet5-w4a8-distill", "01a0561218"),  # distillation
    ("fashion-mnist/lenet5-w4a8-qat", "34eb857224"),
    ("fashion-mnist/resnet18-teacher", "17349a3042"),
    ("fashion-mnist/resnet20-teacher", "47e7715527"),
    # added with QAT of residual networks (identities under kd.teacher_precision=fp32 likewise)
    ("fashion-mnist/resnet18-w4a8-distill", "670e10687e"),  # distillation
    ("fashion-mnist/resnet20-w4a8-distill", "ae94136260"),  # distillation
    ("fashion-mnist/resnet20-w4a8-qat", "76b299f6b0"),
]


@pytest.mark.parametrize(("recipe", "identity"), RECORDED)
def test_shipped_recipes_keep_their_identity(recipe, identity):
    cfg = load_config(recipe)
    if cfg.kd is not None:
        # auto became the default teacher precision: a distillation recipe's identity moved,
        # and the old one (the old default, fp32) is what kd.teacher_precision=fp32 gives
        assert run_identity(cfg) != identity
        cfg = apply_overrides(cfg, ["kd.teacher_precision=fp32"])
    assert run_identity(cfg) == identity


def test_speed_settings_are_not_part_of_the_identity():
    cfg = load_config("digits/scratch")
    assert run_identity(apply_overrides(cfg, ["data.workers=3"])) == run_identity(cfg)
    assert run_identity(apply_overrides(cfg, ["data.pipeline=memory"])) != run_identity(cfg)
