"""Every bad input gets one clear line that names the bad thing, never a traceback: configs,
data files, model files, caches and run directories (the issue's matrix, 70 cases)."""

import gzip
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from kdistill.cli.main import main
from kdistill.models import ModelSpec, load_state_file, save_model_file

DIGITS = ["--dataset", "digits", "train.tensorboard=false", "train.measure_latency=false"]


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def check(argv, capsys, message, code=1):
    got, err = run_cli(argv, capsys)
    assert "Traceback" not in err, err
    assert got == code, err
    assert re.search(message, err), f"{message!r} not in {err!r}"


# ----------------------------------------------------------------------------- configs

YAML_CASES = {
    "alias bomb": ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases"),
    "duplicate key": ("name: a\nname: b\n", "duplicate key 'name'"),
    "python tag": ("name: !!python/object/apply:os.system [ls]\n", "not valid YAML"),
    "list at the top": ("- 1\n- 2\n", "top level must be a mapping"),
    "unknown section": ("optimizer: {lr: 1}\n", "unknown key 'optimizer'.*Did you mean 'optim'"),
    "wrong nesting": ("optim: 0.1\n", "optim must be a mapping"),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_bad_yaml_files(tmp_path, capsys, case):
    text, message = YAML_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    check(["config", "show", path], capsys, message)


OVERRIDE_CASES = [
    ("optim.lrr=1", "Did you mean 'lr'"),
    ("train.epochs=ten", "train.epochs must be an integer, got 'ten'"),
    ("optim.name=adam", "did you mean 'adamw'"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("kd.teachers.0.checkpoint=t.safetensors ; kd.temperature=0", "kd.temperature must be a finite number > 0"),
    ("kd.teachers.0.checkpoint=t.safetensors ; kd.alpha=1.5", "kd.beta=None means beta = 1 - alpha, which needs alpha <= 1"),
    ("kd.teachers.0.checkpoint=t.safetensors ; kd.alpha=0 ; kd.beta=0", "kd.alpha .* are both 0"),
    ("kd.teachers.0.checkpoint=t.safetensors ; kd.start_epoch=99", "kd.start_epoch=99 is not before train.epochs"),
    ("kd.teachers.0.checkpoint=t.safetensors ; kd.ensemble_weights=[1,2]", "kd.ensemble_weights: 2 weights for 1 teachers"),
    ("policies=[{kind: quantization, activation_bits: 9}]", "activation_bits must be in 2..8, got 9"),
    ("policies=[{kind: pruning, target_sparsity: 1.0}]", r"target_sparsity must be in \(0, 1\), got 1.0"),
    ("policies=[{kind: prune}]", "kind must be one of .*did you mean 'pruning'"),
    ("schedule.name=multistep ; schedule.milestones=[50]", "milestones has 50, which is not before train.epochs"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("name=my run", "name must be non-empty and use letters"),
    ("data.val_fraction=1", r"data.val_fraction must be in \[0, 1\), got 1.0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("train.seed=-3", "train.seed must be an integer >= 0, got -3"),
    ("optim.grad_clip=-1", "optim.grad_clip must be > 0, got -1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), OVERRIDE_CASES)
def test_bad_overrides(capsys, overrides, message):
    check(["config", "show", "digits/scratch", *overrides.split(" ; ")], capsys, message)


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["train", "--seed", "-1"], r"train.seed must be an integer >= 0, got -1 \(set by --seed\)", 1),
        (["train", "digits/distil"], "did you mean 'digits/distill'", 2),
        (["train", "configs/missing.yaml"], "config file 'configs/missing.yaml' does not exist", 2),
        (["train", "--seeds", "0,0"], "distinct", 2),
        (["train", "--nproc", "0"], "--nproc must be >= 1, got 0", 2),
        # said first and once, by the launcher before torchrun starts
        (["train", "--nproc", "2", "train.epoch=3"], r"^kdistill train: error: unknown key 'train\.epoch'[^\n]*\n?$", 1),
        (["train", "digits/scratch", "oops"], "unexpected argument 'oops'", 2),
        (["sweep", "--base", "digits/scratch", "--grid", "train.seed=1,2"], "cannot vary train.seed", 1),
    ],
)  # fmt: skip
def test_bad_command_lines(tmp_path, capsys, argv, message, code):
    check([*argv, "--out", tmp_path] if argv[0] != "sweep" else argv, capsys, message, code)


# ----------------------------------------------------------------------------- data files


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def fmnist_dir(tmp_path, damage):
    root = tmp_path / "fmnist"
    root.mkdir()
    files = {
        "train-images-idx3-ubyte": np.zeros((20, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(20) % 10,
        "t10k-images-idx3-ubyte": np.zeros((10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10) % 10,
    }
    for name, array in files.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    damage(root / "train-images-idx3-ubyte.gz")
    return root


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def image_folder(tmp_path, empty_class=False, corrupt=False):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=i * 20).save(root / c / f"{i}.png")
    if empty_class:
        (root / "c").mkdir()
    if corrupt:
        (root / "a" / "9.png").write_bytes(b"not an image")
    return root


def data_case(name, tmp_path):
    x = np.random.default_rng(0).random((12, 4, 4)).astype(np.float32)
    y = np.arange(12) % 3
    cases = {
        "truncated gz": (
            lambda: ["fashion-mnist", fmnist_dir(tmp_path, lambda p: p.write_bytes(p.read_bytes()[:40]))],
            "train-images-idx3-ubyte.gz: cannot be read or decompressed.*truncated or damaged",
        ),
        "not IDX": (
            lambda: ["fashion-mnist", fmnist_dir(tmp_path, lambda p: p.write_bytes(gzip.compress(b"hello world")))],
            "train-images-idx3-ubyte.gz: not an IDX file",
        ),
        "short IDX": (
            lambda: ["fashion-mnist", fmnist_dir(tmp_path, lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 28, 28)))[:-5])))],
            "header promises",
        ),
        "missing folder": (lambda: ["fashion-mnist", tmp_path / "nowhere"], "Fashion-MNIST not found in .*nowhere"),
        "empty npz": (lambda: ["npz", _touch(tmp_path / "empty.npz")], "empty.npz: not a readable .npz"),
        "npz without x_train": (lambda: ["npz", write_npz(tmp_path / "a.npz", x=x)], "needs arrays x_train and y_train"),
        "string pixels": (lambda: ["npz", write_npz(tmp_path / "s.npz", x_train=x.astype(str), y_train=y)], "x_train: pixels must be numbers"),
        "NaN pixels": (lambda: ["npz", write_npz(tmp_path / "n.npz", x_train=np.where(x > 0.5, np.nan, x), y_train=y)], "x_train: .* NaN or infinite"),
        "object array": (lambda: ["npz", _object_npz(tmp_path / "o.npz", y)], "array x_train cannot be read safely"),
        "pixels above 1": (lambda: ["npz", write_npz(tmp_path / "r.npz", x_train=x * 5, y_train=y)], r"must lie in \[0, 1\]"),
        "labels out of range": (lambda: ["npz", write_npz(tmp_path / "l.npz", x_train=x, y_train=y + 5, class_names=np.array(["a", "b", "c"]))], "labels must be in 0..2"),
        "one class": (lambda: ["npz", write_npz(tmp_path / "one.npz", x_train=x, y_train=np.zeros(12, int))], "has 1 class .* at least two"),
        "empty class folder": (lambda: ["imagefolder", image_folder(tmp_path, empty_class=True)], "class\\(es\\) 'c' have no training samples"),
        "corrupt image": (lambda: ["imagefolder", image_folder(tmp_path, corrupt=True)], "9.png: cannot read image"),
        "missing cifar batches": (lambda: ["cifar10", tmp_path], "cifar10 batches not found .*missing data_batch_1"),
    }  # fmt: skip
    return cases[name]


def _touch(path):
    path.write_bytes(b"")
    return path


def _object_npz(path, y):
    with open(path, "wb") as f:
        np.savez(f, x_train=np.array([object(), object()], dtype=object), y_train=y)
    return path


DATA_CASES = [
    "truncated gz", "not IDX", "short IDX", "missing folder", "empty npz", "npz without x_train",
    "string pixels", "NaN pixels", "object array", "pixels above 1", "labels out of range",
    "one class", "empty class folder", "corrupt image", "missing cifar batches",
]  # fmt: skip


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_files(tmp_path, capsys, case):
    make, message = data_case(case, tmp_path)
    name, root = make()
    argv = [
        "train",
        "--dataset",
        name,
        "--data-root",
        root,
        "--arch",
        "mlp",
        "--out",
        tmp_path / "r",
    ]
    check(argv, capsys, message)


def test_topk_beyond_the_classes(tmp_path, capsys, teacher_run):
    check(
        ["train", *DIGITS, "--out", tmp_path, f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
         "kd.teacher_cache.enabled=true", "kd.teacher_cache.topk=20"],
        capsys, "kd.teacher_cache.topk=20 is more than the 10 classes of digits",
    )  # fmt: skip


# ----------------------------------------------------------------------------- model files

SPEC = ModelSpec("mlp", {"hidden": [8]}, 10, (1, 8, 8), dataset="digits")


def model_case(name, tmp_path):
    path = tmp_path / "m.safetensors"
    good = SPEC.build_architecture().state_dict()

    def meta(text):
        save_file(
            {k: v.contiguous() for k, v in good.items()}, str(path), metadata={"kdistill": text}
        )

    if name == "junk":
        path.write_bytes(b"garbage")
    elif name == "foreign":
        save_file({"w": torch.zeros(2)}, str(path))
    elif name == "missing field":
        meta('{"format_version": 1, "arch": "mlp"}')
    elif name == "unknown field":
        data = json.loads(SPEC.to_json())
        meta(json.dumps({**data, "code": "os:system"}))
    elif name == "wrong type":
        meta(json.dumps({**json.loads(SPEC.to_json()), "num_classes": "ten"}))
    elif name == "flipped bytes":
        save_model_file(path, good, SPEC)
        data = bytearray(path.read_bytes())
        data[-2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif name == "float64":
        save_model_file(path, {k: v.double() for k, v in good.items()}, SPEC)
    elif name == "planted code":
        save_model_file(
            path, good, ModelSpec(**{**SPEC.__dict__, "arch": "os:system", "origin": None})
        )
    return path


MODEL_CASES = [
    ("missing", "model file .*m.safetensors does not exist"),
    ("junk", "m.safetensors: not a readable .safetensors file"),
    ("foreign", "m.safetensors: a .safetensors file without kdistill metadata"),
    ("missing field", "missing field\\(s\\) args, input_shape, num_classes"),
    ("unknown field", "unknown field\\(s\\) code"),
    ("wrong type", "field 'num_classes' must be an integer >= 1, got 'ten'"),
    ("flipped bytes", "m.safetensors: the weights are corrupted or were changed"),
    ("float64", "is torch.float64, the model needs torch.float32"),
    ("planted code", "names the architecture 'os:system', an import path"),
]


@pytest.mark.parametrize(("case", "message"), MODEL_CASES)
def test_bad_model_files(tmp_path, capsys, case, message):
    path = model_case(case, tmp_path)
    check(["eval", path], capsys, message)
    if case != "missing":  # the same file as a teacher
        if case == "foreign":  # plain weights can teach, given their architecture
            message = r"holds weights without an architecture.*kd.teachers.0.arch"
        check(["train", *DIGITS, "--out", tmp_path / "r", "--kd-resume", path], capsys, message)


def test_teachers_that_cannot_teach(tmp_path, capsys, teacher_run):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teacher_run.run_dir, unfinished)
    (unfinished / "summary.json").unlink()
    check(
        ["train", *DIGITS, "--out", tmp_path / "r", "--kd-resume", unfinished],
        capsys,
        "is an unfinished run",
    )
    other = ModelSpec("mlp", {"hidden": [4]}, 3, (1, 8, 8))
    save_model_file(tmp_path / "three.safetensors", other.build_architecture().state_dict(), other)
    check(
        ["train", *DIGITS, "--out", tmp_path / "r", "--kd-resume", tmp_path / "three.safetensors"],
        capsys,
        "predicts 3 classes but digits has 10",
    )
    zeros = {k: torch.zeros_like(v) for k, v in SPEC.build_architecture().state_dict().items()}
    save_model_file(tmp_path / "zero.safetensors", zeros, SPEC)
    check(
        ["train", *DIGITS, "--out", tmp_path / "r", "--kd-resume", tmp_path / "zero.safetensors"],
        capsys,
        "reaches only .* cannot\\s+teach",
    )
    check(["eval", tmp_path / "missing.onnx"], capsys, "ONNX model .*missing.onnx does not exist")  # fmt: skip


# ----------------------------------------------------------------------------- caches


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory, teacher_run):
    root = tmp_path_factory.mktemp("cache")
    code = main(
        ["cache", "build", "--dataset", "digits", f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
         f"kd.teacher_cache.dir={root / 'c'}", "-q", "--out", str(root)]
    )  # fmt: skip
    assert code == 0
    return root / "c"


def damaged_cache(built_cache, tmp_path, damage):
    copy = tmp_path / "c"
    shutil.copytree(built_cache, copy)
    damage(copy)
    return copy


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _object_ids(cache):
    np.save(cache / "sample_ids.npy", np.array([object()], dtype=object), allow_pickle=True)
    manifest = json.loads((cache / "manifest.json").read_text())
    from kdistill.files import sha256_file

    manifest["files"]["sample_ids.npy"] = sha256_file(cache / "sample_ids.npy")
    (cache / "manifest.json").write_text(json.dumps(manifest))


CACHE_CASES = {
    "not a cache": (lambda c: shutil.rmtree(c) or c.mkdir(), "is not a finished teacher cache"),
    "torn manifest": (lambda c: (c / "manifest.json").write_text('{"format'), "manifest.json is not valid JSON"),
    "flipped logits": (lambda c: _flip(c / "logits.npy"), "logits.npy is corrupted or was changed"),
    "truncated logits": (lambda c: (c / "logits.npy").write_bytes((c / "logits.npy").read_bytes()[:100]), "logits.npy is corrupted"),
    "object array": (_object_ids, "sample_ids.npy cannot be read"),
    "old format": (lambda c: (c / "manifest.json").write_text(json.dumps({**json.loads((c / "manifest.json").read_text()), "format_version": 1})), "cache format 1, this kdistill reads 2"),
}  # fmt: skip


@pytest.mark.parametrize("case", CACHE_CASES)
def test_bad_caches(tmp_path, capsys, built_cache, case):
    damage, message = CACHE_CASES[case]
    cache = damaged_cache(built_cache, tmp_path, damage)
    check(["cache", "info", cache], capsys, message)


# ----------------------------------------------------------------------------- run directories


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = [
        "train",
        *DIGITS,
        "--arch",
        "mlp",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--name",
        "r",
        "-q",
    ]
    assert main(argv) == 0
    return argv, (out / "r").resolve()


def copy_run(finished, tmp_path):
    argv, run_dir = finished
    out = tmp_path / "runs"
    shutil.copytree(run_dir.parents[1], out)
    new = out / run_dir.parent.name / run_dir.name
    return [*argv, "--out", str(out)], new


def test_edited_and_torn_run_files(tmp_path, capsys, finished):
    argv, run_dir = copy_run(finished, tmp_path)
    record = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**record, "test_top1": 0.9999}))
    check(
        ["report", run_dir, "--out", tmp_path / "rep"],
        capsys,
        "summary.json was edited or corrupted",
    )
    check(["eval", run_dir], capsys, "summary.json was edited or corrupted")
    (run_dir / "summary.json").write_text(json.dumps(record))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "tor')
    check(
        ["report", run_dir, "--out", tmp_path / "rep"],
        capsys,
        "metrics.jsonl is corrupted or was changed",
    )
    (run_dir / "summary.json").write_text("{ torn")
    check(["eval", run_dir], capsys, "summary.json is not valid JSON")
    check(["train", *argv[1:]], capsys, "already holds a finished run .*pass --force")  # fmt: skip


def test_unfinished_runs(tmp_path, capsys, finished):
    argv, run_dir = copy_run(finished, tmp_path)
    (run_dir / "summary.json").unlink()
    check(["train", *argv[1:]], capsys, "holds an unfinished run .*pass --resume")
    pointer = run_dir / "checkpoints" / "latest.json"
    latest = json.loads(pointer.read_text())
    for kept in latest["files"]:  # every checkpoint a resume could fall back to
        _flip(run_dir / "checkpoints" / kept / "state.pt")
    check(
        ["train", *argv[1:], "--resume"], capsys, "state.pt is corrupted or was changed .*--force"
    )
    pointer.write_text("{")
    check(["train", *argv[1:], "--resume"], capsys, "latest.json is not valid JSON")


def test_an_output_directory_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    check(
        ["train", *DIGITS, "--arch", "mlp", "--out", tmp_path / "file"],
        capsys,
        "file.*Not a directory",
    )


def test_the_matrix_has_at_least_60_cases():
    cases = (
        len(YAML_CASES) + len(OVERRIDE_CASES) + 7 + len(DATA_CASES) + 1 + 2 * len(MODEL_CASES) - 1
        + 4 + len(CACHE_CASES) + 5 + 3 + 1
    )  # fmt: skip
    assert cases >= 60, cases


def test_load_state_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="nothing.safetensors"):
        load_state_file(tmp_path / "nothing.safetensors")


def test_a_model_file_cannot_make_timm_read_a_file(tmp_path, capsys):
    """A model file's recorded args reach the builder: timm's I/O arguments never do (timm
    refused the pickle it was pointed at, but loading it was never kdistill's to allow)."""
    pytest.importorskip("timm")
    (tmp_path / "payload.pth").write_bytes(b"\x80\x04not a real pickle")
    spec = ModelSpec(
        arch="timm:resnet10t", args={"checkpoint_path": str(tmp_path / "payload.pth")},
        num_classes=10, input_shape=(1, 8, 8), dataset="digits",
    )  # fmt: skip
    path = tmp_path / "m.safetensors"
    good = ModelSpec(**{**spec.__dict__, "args": {}}).build_architecture().state_dict()
    save_model_file(path, good, spec)
    check(["eval", path], capsys, r"checkpoint_path would make timm read weights")
    check(["train", *DIGITS, "--out", tmp_path / "r", "model.arch=timm:resnet10t",
           "model.args={pretrained: true}"], capsys, r"pretrained would make timm read",
          code=1)  # fmt: skip


def test_a_pickled_hugging_face_checkpoint_is_a_clear_error(tmp_path, capsys):
    """transformers refuses a pytorch_model.bin that pickles code (nothing runs), and its
    UnpicklingError must not escape as a traceback."""
    pytest.importorskip("transformers")
    import pickle

    from .test_ecosystem_models import tiny_hf_classifier

    hf_dir = tiny_hf_classifier(tmp_path / "hf")
    (hf_dir / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    (hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}, protocol=2))
    check(["train", *DIGITS, "--out", tmp_path / "r", f"model.arch=hf:{hf_dir}",
           "model.args={}", "train.epochs=1"], capsys, r"cannot load an image classifier")  # fmt: skip
    assert "payload ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (
            "torchvision:squeezenet1_1",
            r"cannot take the data's 1x8x8 images.*Output size is too small",
        ),
        ("timm:test_vit", r"1x8x8 images.*patch size.*made for 3x160x160.*data.image_size"),
    ],
)
def test_a_model_too_large_for_the_images_says_so_before_training(tmp_path, capsys, arch, message):
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    check(["train", *DIGITS, "--out", tmp_path, f"model.arch={arch}", "model.args={}"], capsys,
          message)  # fmt: skip


def test_a_directory_given_as_a_schedule_or_config_says_so(tmp_path, capsys):
    (tmp_path / "sched").mkdir()
    check(["distiller", "digits", "-a", "lenet5", "--compress", tmp_path / "sched", "--dry-run"],
          capsys, r"sched' is a directory; give the YAML file in it")  # fmt: skip
