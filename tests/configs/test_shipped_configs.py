"""Every shipped recipe loads, validates, and names models that build for its data."""

from pathlib import Path

import pytest
import torch

from kdistill.config import list_recipes, load_config, recipes_root
from kdistill.models import build_model

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {
    "digits": ((1, 8, 8), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}
RECIPES = sorted(p for p in recipes_root().rglob("*.yaml") if p.parent.name != "sweeps")
SWEEPS = sorted((recipes_root() / "sweeps").glob("*.yaml"))


def test_recipes_are_found_and_the_repo_link_points_at_them():
    assert len(RECIPES) >= 15
    assert (ROOT / "configs").resolve() == recipes_root().resolve()
    assert "digits/distill" in list_recipes()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(recipes_root())))
def test_recipe_loads_and_its_models_build(path):
    cfg = load_config(path)
    if cfg.data.is_text:  # a language model: token ids in, the tokenizer's vocabulary out
        vocab = 257 if cfg.data.tokenizer == "bytes" else 49_152
        model = build_model(cfg.model.arch, vocab, (cfg.data.block,), cfg.model.args)
        with torch.no_grad():
            ids = torch.zeros(2, cfg.data.block, dtype=torch.long)
            assert model.eval()(ids).shape == (2, cfg.data.block, vocab)
        assert path.read_text().startswith("#"), "each recipe starts with a comment"
        return
    shape, classes = SHAPES[cfg.data.name]
    model = build_model(cfg.model.arch, classes, shape, cfg.model.args)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, *shape)).shape == (2, classes)
    for policy in cfg.policies:  # layer names in the recipe exist in its model
        if policy.kind == "quantization":
            from kdistill.compression.quantization import layer_settings

            assert any(v is not None for v in layer_settings(model, policy).values())
        if policy.kind in ("pruning", "regularization"):
            from kdistill.compression.selection import select_layers

            assert select_layers(model, policy.modules)
    if cfg.kd is not None:
        for teacher in cfg.kd.teachers:
            assert teacher.checkpoint, "a shipped distillation recipe names its teacher's run"
    assert path.read_text().startswith("#"), "each recipe starts with a comment saying what it is"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_load_and_their_settings_validate(path):
    from kdistill.config import apply_values
    from kdistill.config.sweep import load_sweep
    from kdistill.experiment.sweep import resolve_base

    sweep, base_dir = load_sweep(path)
    base = resolve_base(sweep, base_dir)
    assert base.kd is not None and base.kd.teacher_cache.enabled  # share_teacher
    for setting in sweep.grid_settings():
        apply_values(base, setting)  # every combination is a valid run config
    assert len(sweep.grid_settings()) == 10 and sweep.seeds == (0, 1, 2)
