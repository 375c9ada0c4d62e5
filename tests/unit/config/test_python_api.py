"""A config built in Python is refused exactly where the same values in YAML are, with the same
message (the field checks are one function, run by every config class)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args, get_origin

import pytest

from kdistill.config import ConfigError, from_dict, load_config
from kdistill.config.schema import (
    AugmentConfig,
    DataConfig,
    KDConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TeacherCacheConfig,
    TrainConfig,
)
from kdistill.policies import PruningPolicy
from kdistill.validation import field_types

# (config class, where it sits in a YAML file, what a valid instance needs besides the field)
SECTIONS = [
    (DataConfig, ("data",), {}),
    (AugmentConfig, ("data", "augment"), {}),
    (OptimConfig, ("optim",), {}),
    (ScheduleConfig, ("schedule",), {}),
    (TrainConfig, ("train",), {}),
    (KDConfig, ("kd",), {"teachers": (ModelConfig(arch="mlp"),)}),
    (TeacherCacheConfig, ("kd", "teacher_cache"), {}),
]


def _literal_fields():
    for cls, where, extra in SECTIONS:
        for f in dataclasses.fields(cls):
            if get_origin(field_types(cls)[f.name]) is Literal:
                yield pytest.param(cls, where, extra, f.name, id=f"{'.'.join(where)}.{f.name}")


def _nested(where: tuple[str, ...], leaf: dict) -> dict:
    data: dict = leaf
    for key in reversed(where):
        data = {key: data}
    return data


@pytest.mark.parametrize(("cls", "where", "extra", "name"), list(_literal_fields()))
def test_every_literal_field_is_refused_alike(cls, where, extra, name) -> None:
    bad = "not-a-choice"
    yaml_data = _nested(where, {name: bad})
    if cls is KDConfig:
        yaml_data["kd"]["teachers"] = [{"arch": "mlp"}]
    with pytest.raises(ConfigError) as from_yaml:
        from_dict(RunConfig, yaml_data)
    with pytest.raises(ConfigError) as from_python:
        cls(**extra, **{name: bad})
    assert str(from_python.value) == str(from_yaml.value)
    assert f"{'.'.join(where)}.{name} must be one of" in str(from_python.value)
    assert all(str(choice) in str(from_python.value) for choice in get_args(field_types(cls)[name]))


def test_the_reported_adam_case() -> None:
    """``OptimConfig(name="adam")`` once built and silently trained with AdamW."""
    with pytest.raises(
        ConfigError,
        match=r"optim.name must be one of sgd, adamw; got 'adam' "
        r"\(did you mean 'adamw'\?\)",
    ):
        OptimConfig(name="adam")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimConfig(lr="0.1x"), "optim.lr must be a number, got '0.1x' (str)"),
        (lambda: TrainConfig(epochs=2.5), "train.epochs must be an integer, got 2.5 (float)"),
        (lambda: TrainConfig(deterministic=1), "train.deterministic must be true or false"),
        (lambda: OptimConfig(lr=float("nan")), "optim.lr must be a finite number"),
        (lambda: RunConfig(optim={"lr": 0.1}), "optim must be an OptimConfig"),
        (lambda: RunConfig(policies=({"kind": "pruning"},)), "policies[0] must be one of"),
        (lambda: PruningPolicy(kind="prune"), "kind must be one of pruning"),
        (lambda: ModelConfig(arch=3), "model.arch must be a string"),
    ],
)
def test_wrong_types_are_refused_in_python(make, message) -> None:
    with pytest.raises(ConfigError) as e:
        make()
    assert message in str(e.value)


def test_python_values_are_converted_as_yaml_converts_them() -> None:
    """An int where a float goes and a list where a tuple goes: the same config either way."""
    from_python = RunConfig(optim=OptimConfig(lr=1, betas=[0.9, 0.99]))
    from_yaml = load_config(None, ["optim.lr=1", "optim.betas=[0.9, 0.99]"])
    assert from_python == from_yaml
    assert type(from_python.optim.lr) is float and from_python.optim.betas == (0.9, 0.99)


def test_an_arch_override_drops_the_old_architectures_args_with_a_note() -> None:
    """``kdistill train digits/scratch model.arch=timm:resnet18`` once passed the MLP's
    ``hidden`` to timm's ResNet."""
    recipe = load_config("digits/scratch")
    assert recipe.model.args, "the test needs a recipe whose model has arguments"
    notes: list[str] = []
    cfg = load_config("digits/scratch", ["model.arch=resnet20"], notes=notes)
    assert cfg.model.arch == "resnet20" and cfg.model.args == {}
    assert len(notes) == 1 and "model.arch changed from mlp to resnet20" in notes[0]
    assert "hidden=" in notes[0] and "are dropped" in notes[0]


def test_an_arch_override_with_its_own_args_or_the_same_arch_keeps_them() -> None:
    notes: list[str] = []
    both = load_config(
        "digits/scratch", ["model.arch=mlp_wide", "model.args.hidden=[32]"], notes=notes
    )
    assert both.model.args == {"hidden": [32]} and notes == []
    same = load_config("digits/scratch", ["model.arch=mlp"], notes=notes)
    assert same.model.args == load_config("digits/scratch").model.args and notes == []
