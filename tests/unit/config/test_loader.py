"""Config loading: types, unknown keys, overrides, YAML, hashing, cross-field checks, docs."""

from pathlib import Path

import pytest

from kdistill.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_hash,
    dump_yaml,
    from_dict,
    load_config,
    to_dict,
)
from kdistill.config.docs import render_markdown

DOCS = Path(__file__).resolve().parents[3] / "docs" / "config.md"
TEACHER = {"teachers": [{"checkpoint": "t.safetensors"}]}


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = RunConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed_and_create_sections():
    cfg = apply_overrides(
        RunConfig(),
        [
            "optim.lr=1e-3",  # YAML 1.1 reads this as a string: still a float here
            "kd.teachers.0.checkpoint=runs/t",
            "kd.temperature=2",
            "model.args.hidden=[800, 800]",
            "data.augment.hflip=true",
            "schedule.milestones=[3, 6]",
            "train.epochs=8",
        ],
    )
    assert cfg.optim.lr == 0.001
    assert (
        cfg.kd is not None and cfg.kd.temperature == 2.0 and isinstance(cfg.kd.temperature, float)
    )
    assert cfg.kd.teachers[0].checkpoint == "runs/t"
    assert cfg.model.args["hidden"] == [800, 800]
    assert cfg.data.augment.hflip is True
    assert cfg.schedule.milestones == (3, 6)


def test_null_override_disables_a_section():
    cfg = apply_overrides(RunConfig(), ["kd.teachers.0.checkpoint=x"])
    assert apply_overrides(cfg, ["kd=null"]).kd is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("kd.temprature=2", r"unknown key 'kd.temprature'.*Did you mean 'temperature'"),
        (
            "optim.name=adam",
            r"optim.name must be one of sgd, adamw; got 'adam' \(did you mean 'adamw'\?\)",
        ),
        ("data.batch_size=1.5", r"data.batch_size must be an integer, got 1.5"),
        ("train.epochs=ten", r"train.epochs must be an integer, got 'ten'"),
        ("data.augment.hflip=maybe", r"data.augment.hflip must be true or false"),
        ("optim.lr=-1", r"optim.lr must be > 0, got -1.0"),
        ("data.name=svhn", r"data.name must be one of digits, fashion-mnist"),
        ("lr=0.1", r"unknown key 'lr'. Valid keys in the top level"),
        ("train.epochs", r"must look like key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


@pytest.mark.parametrize(
    ("kd", "message"),
    [
        ({}, "at least one teacher"),
        ({"teachers": [{"arch": "mlp"}]}, r"kd.teachers\[0\] has no checkpoint"),
        ({**TEACHER, "alpha": 1.5}, "needs alpha <= 1"),
        ({**TEACHER, "alpha": 0.0, "beta": 0.0}, "both 0"),
        ({**TEACHER, "temperature": 0}, "kd.temperature must be a finite number > 0"),
        ({**TEACHER, "ensemble_weights": [1, 2]}, "2 weights for 1 teachers"),
        (
            {"teachers": [{"arch": "mlp"}, {"arch": "mlp"}], "teacher_weight": 0.5},
            "exactly one teacher",
        ),
        ({**TEACHER, "start_epoch": 10}, "never run"),
    ],
)
def test_kd_cross_field_checks(kd, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, {"kd": kd, "train": {"epochs": 10}})


def test_joint_training_may_start_from_an_untrained_teacher():
    cfg = from_dict(RunConfig, {"kd": {"teachers": [{"arch": "mlp"}], "teacher_weight": 0.5}})
    assert cfg.kd.teacher_weight == 0.5


def test_other_cross_field_checks():
    with pytest.raises(ConfigError, match="milestones"):
        from_dict(RunConfig, {"schedule": {"name": "multistep"}})
    with pytest.raises(ConfigError, match="not before train.epochs"):
        from_dict(
            RunConfig,
            {"schedule": {"name": "multistep", "milestones": [20]}, "train": {"epochs": 10}},
        )
    with pytest.raises(ConfigError, match="train.device"):
        from_dict(RunConfig, {"train": {"device": "gpu"}})
    with pytest.raises(ConfigError, match="name must be non-empty"):
        from_dict(RunConfig, {"name": "my run"})
    with pytest.raises(ConfigError, match="a model needs an arch"):
        from_dict(RunConfig, {"model": {"arch": None}})


def test_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("name: !!python/object:os.system x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tagged)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == RunConfig()


def test_hash_is_stable_and_sensitive():
    a = RunConfig()
    assert config_hash(a) == config_hash(RunConfig())
    b = apply_overrides(a, ["optim.lr=0.1"])
    assert config_hash(a) != config_hash(b)
    c = apply_overrides(a, ["train.seed=3", "out_dir=elsewhere"])
    assert config_hash(a, exclude=("out_dir", "train.seed")) == config_hash(
        c, exclude=("out_dir", "train.seed")
    )


def test_to_dict_is_plain_data():
    data = to_dict(apply_overrides(RunConfig(), ["kd.teachers.0.checkpoint=x"]))
    assert data["kd"]["teachers"] == [
        {"arch": None, "args": {}, "checkpoint": "x", "input_mean": None, "input_std": None,
         "input_size": None, "init_from_teacher": False, "teacher_layers": None,
         "lora": None}
    ]  # fmt: skip
    assert isinstance(data["optim"]["betas"], list)


def test_docs_cover_every_key_and_are_in_sync():
    text = render_markdown()
    for key in (
        "kd.temperature",
        "kd.teachers[i].checkpoint",
        "data.augment.crop_padding",
        "train.on_collapse",
    ):
        assert f"`{key}`" in text
    assert DOCS.read_text() == text, (
        "docs/config.md is stale: run `kdistill config docs > docs/config.md`"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["kd.teachers=[{checkpoint: t.pt, input_mean: [0.5]}]"], "input_mean and input_std go together"),
        (["kd.teachers=[{checkpoint: t.pt, input_mean: [0.5], input_std: [0]}]"], "input_std must be > 0"),
        (["kd.teachers=[{checkpoint: t.pt, input_mean: [0.5, 0.4], input_std: [0.2]}]"], "one value per channel"),
        (["kd.teachers=[{checkpoint: t.pt, input_size: 0}]"], "input_size must be >= 1"),
        (["model.input_size=32"], "apply to kd.teachers"),
    ],
)  # fmt: skip
def test_foreign_teacher_inputs_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)
