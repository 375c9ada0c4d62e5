"""Dataset readers on small files the tests write themselves."""

import gzip
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.config import AugmentConfig, DataConfig
from kdistill.data import DataError, build_data
from kdistill.data.sources import read_idx


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def fake_fashion_mnist(root, compress=True, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(root / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path, compress):
    fake_fashion_mnist(tmp_path, compress)
    data = build_data(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert (len(data.train), len(data.test)) == (30, 10)
    assert data.input_shape == (1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.train.ids.tolist() == list(range(30))
    assert data.class_names[0] == "T-shirt/top"


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*data.root"):
        build_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "nowhere")))
    (tmp_path / "partial").mkdir()
    write_idx(tmp_path / "partial" / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), True)
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        build_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "partial")))


def test_mnist_in_its_own_folder_or_torchvisions_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # where torchvision (and so Distiller) keeps it
    raw.mkdir(parents=True)
    fake_fashion_mnist(raw, compress=False)
    data = build_data(DataConfig(name="mnist", root=str(tmp_path)))
    assert (len(data.train), len(data.test)) == (30, 10) and data.class_names[3] == "3"
    assert build_data(DataConfig(name="mnist", root=str(raw))).num_classes == 10
    with pytest.raises(DataError, match="mnist dataset needs data.root"):
        build_data(DataConfig(name="mnist"))
    with pytest.raises(DataError, match="MNIST not found in"):
        build_data(DataConfig(name="mnist", root=str(tmp_path / "nowhere")))


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"ab")
    with pytest.raises(DataError, match="promises"):
        read_idx(tmp_path / "short")


def cifar_batch(path, n, label_key, num_classes, offset=0):
    data = {
        b"data": np.full((n, 3072), offset, dtype=np.uint8),
        label_key.encode(): [(i + 2 * offset) % num_classes for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)


def test_cifar10_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        cifar_batch(base / f"data_batch_{i}", 4, "labels", 10, offset=i)
    cifar_batch(base / "test_batch", 3, "labels", 10)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"plane", b"car"] + [f"c{i}".encode() for i in range(8)]}, f)
    data = build_data(DataConfig(name="cifar10", root=str(tmp_path)))
    assert (len(data.train), len(data.test)) == (20, 3)
    assert data.input_shape == (3, 32, 32)
    assert data.class_names[:2] == ("plane", "car")
    assert int(data.train.images[4, 0, 0, 0]) == 2  # the second batch's samples follow the first's


def test_cifar100_batches(tmp_path):
    cifar_batch(tmp_path / "train", 6, "fine_labels", 100)
    cifar_batch(tmp_path / "test", 2, "fine_labels", 100)
    with pytest.raises(
        DataError, match=r"class\(es\) '6', '7', '8', '9', '10' and 89 more have no"
    ):
        build_data(DataConfig(name="cifar100", root=str(tmp_path)))  # 94 classes never seen
    cifar_batch(tmp_path / "train", 200, "fine_labels", 100)
    data = build_data(DataConfig(name="cifar100", root=str(tmp_path)))
    assert data.num_classes == 100 and len(data.train) == 200


def test_cifar_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    base = tmp_path
    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": Evil()}, f)
    cifar_batch(base / "test_batch", 1, "labels", 10)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        build_data(DataConfig(name="cifar10", root=str(base)))


def test_cifar_needs_a_root(tmp_path):
    with pytest.raises(DataError, match="never downloads"):
        build_data(DataConfig(name="cifar10"))
    with pytest.raises(DataError, match="missing data_batch_1"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path)))


def write_images(root, classes, per_class, size=(10, 10), mode="RGB"):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = (40 * c + i) % 256
            Image.new(mode, size, color=(value, 0, 0) if mode == "RGB" else value).save(
                root / name / f"{i:03d}.png"
            )


def test_imagefolder_with_train_and_test(tmp_path):
    write_images(tmp_path / "train", ["cat", "dog"], 3)
    write_images(tmp_path / "test", ["cat", "dog"], 2)
    data = build_data(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert data.class_names == ("cat", "dog")
    assert data.input_shape == (3, 10, 10) and len(data.train) == 6 and len(data.test) == 4
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(data.train.images[3, 0, 0, 0]) == 40  # dog 000: red channel 40


def test_imagefolder_without_splits_resizes_and_holds_out(tmp_path):
    write_images(tmp_path, ["a", "b"], 5, size=(12, 9), mode="L")
    write_images(tmp_path / "more", ["c"], 0)  # a class folder without images
    with pytest.raises(DataError, match="no class subdirectories|class folders"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "more" / "c")))
    with pytest.raises(DataError, match="class\\(es\\) 'more' have no training samples"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    shutil.rmtree(tmp_path / "more")
    data = build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    assert data.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 10 and len(data.test) == 2


def test_imagefolder_sizes_must_agree(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "a" / "0.png")
    Image.new("L", (6, 6)).save(tmp_path / "a" / "1.png")
    Image.new("L", (5, 5)).save(tmp_path / "a" / "2.png")
    with pytest.raises(DataError, match="set data.image_size"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path)))


@pytest.mark.parametrize(
    ("x", "shape"),
    [
        (np.zeros((20, 6, 6), np.uint8), (1, 6, 6)),
        (np.zeros((20, 6, 6, 3), np.uint8), (3, 6, 6)),
        (np.zeros((20, 3, 6, 6), np.float32), (3, 6, 6)),
        (np.zeros((20, 13), np.float64), (13,)),
    ],
)
def test_npz_layouts(tmp_path, x, shape):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(20) % 4)
    data = build_data(DataConfig(name="npz", root=str(path)))
    assert data.input_shape == shape and data.num_classes == 4 and len(data.test) == 4


def test_npz_with_test_split_and_names(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=np.ones((8, 4, 4), np.uint8),
        y_train=np.arange(8) % 2,
        x_test=np.ones((3, 4, 4), np.uint8),
        y_test=[0, 1, 1],
        class_names=np.array(["no", "yes"]),
    )
    data = build_data(DataConfig(name="npz", root=str(path)))
    assert data.class_names == ("no", "yes") and len(data.test) == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 3))}, "needs arrays x_train and y_train"),
        (
            {"x_train": np.zeros((4, 3)), "y_train": np.zeros(4), "x_test": np.zeros((1, 3))},
            "both x_test and y_test",
        ),
        (
            {"x_train": np.full((4, 3, 3), 2.0), "y_train": np.zeros(4, int)},
            r"must lie in \[0, 1\]",
        ),
        ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(3, int)}, "must be 4 integer labels"),
        (
            {
                "x_train": np.zeros((4, 3)),
                "y_train": np.zeros(4, int),
                "x_test": np.zeros((2, 5)),
                "y_test": np.zeros(2, int),
            },
            "differ in shape",
        ),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        build_data(DataConfig(name="npz", root=str(path)))
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(name="npz", root=str(tmp_path / "nope.npz")))


def test_digits_split_is_fixed_and_ids_are_stable():
    a = build_data(DataConfig())
    b = build_data(DataConfig())
    assert torch.equal(a.test.ids, b.test.ids)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert set(a.train.ids.tolist()).isdisjoint(a.test.ids.tolist())
    other = build_data(DataConfig(split_seed=1))
    assert not torch.equal(a.test.ids, other.test.ids)
    assert a.input_shape == (1, 8, 8) and a.train.images.max() <= 1.0


def test_validation_split_is_carved_from_train():
    plain = build_data(DataConfig())
    data = build_data(DataConfig(val_fraction=0.1))
    assert torch.equal(data.test.ids, plain.test.ids)
    assert len(data.val) == round(0.1 * len(plain.train))
    assert sorted(data.train.ids.tolist() + data.val.ids.tolist()) == sorted(
        plain.train.ids.tolist()
    )


def test_augmenting_vectors_is_refused(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x_train=np.zeros((10, 5)), y_train=np.arange(10) % 2)
    with pytest.raises(DataError, match="feature vectors"):
        build_data(DataConfig(name="npz", root=str(path), augment=AugmentConfig(crop_padding=1)))


def test_channel_statistics():
    data = build_data(DataConfig())
    flat = data.train.images.double()
    assert data.mean[0] == pytest.approx(float(flat.mean()), rel=1e-9)
    assert data.std[0] == pytest.approx(float(flat.std(unbiased=False)), rel=1e-6)


@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_imagefolder_channels_come_from_all_the_data(tmp_path, pipeline):
    """The first file (in sort order) grayscale, the others colour: RGB, and the log says why
    (the channel count was read from the first file alone)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (6, 6), color=90).save(tmp_path / "a" / "0.png")
    Image.new("RGB", (6, 6), color=(200, 10, 10)).save(tmp_path / "a" / "1.png")
    for i in range(3):
        Image.new("RGB", (6, 6), color=(10, 200, 10)).save(tmp_path / "b" / f"{i}.png")
    data = build_data(DataConfig(name="imagefolder", root=str(tmp_path), pipeline=pipeline))
    assert data.input_shape == (3, 6, 6)
    assert "RGB: 1.png is colour" in data.describe_pipeline()
    grey = data.train.images[data.train.labels == 0][:1]
    if pipeline == "stream":
        grey = torch.from_numpy(data.train.images.decode(0))[None]
    assert grey[0, :, 0, 0].tolist() == [90, 90, 90]  # the grayscale file, as RGB


@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path, pipeline):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            value = 23729 if c == "a" else 65535
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / c / f"{i}.png")
    data = build_data(DataConfig(name="imagefolder", root=str(tmp_path), pipeline=pipeline))
    assert "grayscale: all" in data.describe_pipeline() and data.input_shape == (1, 4, 4)
    images = data.train.images
    first = images.decode(0) if pipeline == "stream" else images[0].numpy()
    assert int(first[0, 0, 0]) == 92  # 23729 / 257, not clipped to 255


def test_a_decompression_bomb_is_a_data_error_naming_the_file(tmp_path):
    """A PNG whose header claims 30000x30000 pixels: Pillow refuses to decode it with its own
    exception (not an OSError), which must not escape as a traceback."""
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / c / "0.png")
    (tmp_path / "b" / "1.png").write_bytes(bomb)
    with pytest.raises(DataError, match=r"1.png: cannot read image"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path), pipeline="memory"))
    # streamed, in a colour folder (whose headers are not all read up front): the worker's
    # decoding of the file is the same DataError
    for c in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / c / "0.png")
    from kdistill.data.sources import read_image_folder

    files = read_image_folder(str(tmp_path), None, pipeline="stream").train.images
    bomb_at = [p.decode() for p in files.paths].index("b/1.png")
    with pytest.raises(DataError, match=r"1.png: cannot read image"):
        files.decode(bomb_at)
