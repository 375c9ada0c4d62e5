"""Model files and checkpoints: self-describing, atomic, never unpickling code."""

import json

import pytest
import torch
from safetensors.torch import save_file

from kdistill.engine import checkpoint as ck
from kdistill.engine.checkpoint import CheckpointError, ModelSpec
from kdistill.trust import UntrustedCodeError


def spec(**kw):
    base = {
        "arch": "mlp",
        "args": {"hidden": [8]},
        "num_classes": 3,
        "input_shape": (1, 4, 4),
        "mean": (0.5,),
        "std": (0.2,),
        "dataset": "digits",
    }
    return ModelSpec(**{**base, **kw})


def test_model_file_round_trip(tmp_path):
    s = spec()
    model = s.build()
    size = ck.save_model_file(tmp_path / "m.safetensors", model.state_dict(), s)
    assert size == (tmp_path / "m.safetensors").stat().st_size
    loaded, got = ck.load_model(tmp_path / "m.safetensors")
    assert got == s
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "m.safetensors").rename(tmp_path / "model.safetensors")
    ck.load_model(tmp_path, arch="mlp")  # ... and through the run directory
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_mismatches_and_foreign_files(tmp_path):
    s = spec()
    ck.save_model_file(tmp_path / "m.safetensors", s.build().state_dict(), s)
    with pytest.raises(CheckpointError, match="holds a 'mlp' model but 'lenet5'"):
        ck.load_model(tmp_path / "m.safetensors", arch="lenet5")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without kdistill metadata"):
        ck.load_model(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="not a readable"):
        ck.load_model(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_model(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        ck.load_model(tmp_path / "empty")
    other = spec(args={"hidden": [9]})
    ck.save_model_file(tmp_path / "wrong.safetensors", other.build().state_dict(), s)
    with pytest.raises(CheckpointError, match="do not fit"):
        ck.load_model(tmp_path / "wrong.safetensors")


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    s = spec()
    model = s.build()
    for epoch in range(4):
        ck.save_checkpoint(
            tmp_path, epoch, {"model": (model.state_dict(), s)}, {"epoch": epoch}, keep=2
        )
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == [
        "epoch-0002",
        "epoch-0003",
    ]
    latest = ck.latest_checkpoint(tmp_path)
    assert latest.name == "epoch-0003"
    assert ck.load_training_state(latest) == {"epoch": 3}


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    s = spec()
    model = s.build()
    ck.save_checkpoint(tmp_path, 0, {"model": (model.state_dict(), s)}, {"epoch": 0})

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 1, {"model": (model.state_dict(), s)}, {"epoch": 1})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0000", "latest.json"]
    assert json.loads((root / "latest.json").read_text())["dir"] == "epoch-0000"


def test_training_state_never_unpickles_objects(tmp_path):
    root = tmp_path / "checkpoints" / "epoch-0000"
    root.mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, root / "state.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ck.load_training_state(root)


def test_unreadable_pointer(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest.json").write_text("{")
    with pytest.raises(CheckpointError, match="unreadable"):
        ck.latest_checkpoint(tmp_path)
    (root / "latest.json").write_text('{"epoch": 1, "dir": "epoch-0001"}')
    with pytest.raises(CheckpointError, match="incomplete or missing"):
        ck.latest_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"format_version": 7}', "format version 7"),
        ('{"format_version": 1, "arch": "mlp"}', "missing field.*args, input_shape, num_classes"),
        (
            '{"format_version": 1, "arch": "mlp", "args": {}, "num_classes": 3, '
            '"input_shape": [4], "origin": null}',
            "unknown field.*origin",
        ),
        (
            '{"format_version": 1, "arch": "mlp", "args": {}, "num_classes": "3", "input_shape": [4]}',
            "'num_classes' must be an integer",
        ),
        (
            '{"format_version": 1, "arch": "mlp", "args": {}, "num_classes": 3, "input_shape": [4, 4]}',
            "'input_shape' must be a list of 1 or 3",
        ),
        (
            '{"format_version": 1, "arch": 5, "args": {}, "num_classes": 3, "input_shape": [4]}',
            "'arch' must be a non-empty string",
        ),
    ],
)
def test_metadata_is_checked_field_by_field(tmp_path, meta, message):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"), metadata={"kdistill": meta})
    with pytest.raises(CheckpointError, match=message) as info:
        ck.load_model(tmp_path / "m.safetensors")
    assert "m.safetensors" in str(info.value)


def test_a_file_cannot_make_kdistill_import_code(tmp_path):
    s = spec()
    planted = ModelSpec(**{**s.__dict__, "arch": "os:system", "origin": None})
    ck.save_model_file(tmp_path / "m.safetensors", s.build().state_dict(), planted)
    read = ck.read_model_spec(tmp_path / "m.safetensors")
    assert read.origin is not None and read == planted  # where it came from is not data
    with pytest.raises(UntrustedCodeError, match="'os:system', an import path"):
        read.build()
    with pytest.raises(UntrustedCodeError):
        ck.load_model(tmp_path / "m.safetensors", arch=None)
