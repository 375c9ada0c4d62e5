"""Model files: self-describing, checked when read, never unpickling or importing code."""

import pytest
import torch
from safetensors.torch import save_file

from kdistill.experiment import load_model
from kdistill.files import RECORD
from kdistill.models import (
    ModelFileError,
    ModelSpec,
    load_state_file,
    load_weights,
    read_model_spec,
    resolve_model,
    save_model_file,
)
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
    model = s.build_architecture()
    size = save_model_file(tmp_path / "m.safetensors", model.state_dict(), s)
    assert size == (tmp_path / "m.safetensors").stat().st_size
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.spec == s and loaded.checked
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_mismatches_and_foreign_files(tmp_path):
    s = spec()
    save_model_file(tmp_path / "m.safetensors", s.build_architecture().state_dict(), s)
    with pytest.raises(ModelFileError, match="holds a 'mlp' model but 'lenet5'"):
        load_model(tmp_path / "m.safetensors", arch="lenet5")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="without kdistill metadata"):
        load_model(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="without model.safetensors"):
        load_model(tmp_path / "empty")
    other = spec(args={"hidden": [9]})
    save_model_file(tmp_path / "wrong.safetensors", other.build_architecture().state_dict(), s)
    with pytest.raises(ModelFileError, match="do not fit.*size mismatch"):
        load_model(tmp_path / "wrong.safetensors")


def test_flipped_bytes_are_caught(tmp_path):
    s = spec()
    path = tmp_path / "m.safetensors"
    save_model_file(path, s.build_architecture().state_dict(), s)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupted or were changed"):
        load_model(path)
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load_state_file(path)


def test_other_dtypes_are_refused_not_cast(tmp_path):
    s = spec()
    model = s.build_architecture()
    doubled = {k: v.double() for k, v in model.state_dict().items()}
    save_model_file(tmp_path / "f64.safetensors", doubled, s)
    with pytest.raises(ModelFileError, match=r"torch.float64, the model needs torch.float32"):
        load_weights(model, tmp_path / "f64.safetensors")


def test_files_older_than_the_digest_load_unchecked(tmp_path):
    s = spec()
    model = s.build_architecture()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"kdistill": s.to_json()})
    loaded = load_model(tmp_path / "old.safetensors")
    assert not loaded.checked


def test_run_directories_must_be_finished(tmp_path):
    s = spec()
    run_dir = tmp_path / "run"
    save_model_file(run_dir / "model.safetensors", s.build_architecture().state_dict(), s)
    (run_dir / "config.yaml").write_text("name: x\n")
    with pytest.raises(ModelFileError, match="unfinished run.*name a specific file"):
        resolve_model(run_dir)
    assert resolve_model(run_dir / "model.safetensors").file == run_dir / "model.safetensors"
    (run_dir / RECORD).write_text("{ torn")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        resolve_model(run_dir)


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
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(tmp_path / "m.safetensors")
    assert "m.safetensors" in str(info.value)


def test_a_file_cannot_make_kdistill_import_code(tmp_path):
    s = spec()
    planted = ModelSpec(**{**s.__dict__, "arch": "os:system", "origin": None})
    save_model_file(tmp_path / "m.safetensors", s.build_architecture().state_dict(), planted)
    read = read_model_spec(tmp_path / "m.safetensors")
    assert read.origin is not None and read == planted  # where it came from is not data
    with pytest.raises(UntrustedCodeError, match="'os:system', an import path"):
        read.build_architecture()
    with pytest.raises(UntrustedCodeError):
        load_model(tmp_path / "m.safetensors")


def test_the_same_model_gives_the_same_bytes_every_time(tmp_path):
    """safetensors keeps metadata in a hash map seeded anew for each file it writes (and each
    process), so the same tensors and metadata came out in different byte orders; kdistill
    writes the keys sorted, so sha256sum of two runs' model files agrees."""
    s = spec()
    torch.manual_seed(0)
    state = s.build_architecture().state_dict()
    paths = [tmp_path / f"m{i}.safetensors" for i in range(8)]
    for path in paths:
        save_model_file(path, state, s)
    assert len({p.read_bytes() for p in paths}) == 1
    assert load_model(paths[0]).checked
