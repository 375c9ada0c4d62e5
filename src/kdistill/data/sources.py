"""Readers for the datasets kdistill knows. Nothing here downloads anything.

Each reader returns a :class:`RawData`: a train and an optional test split of images (uint8 in
[0, 255], or float32 in [0, 1]; or float32 feature vectors) with integer labels and **stable
sample ids** (the sample's index in the source's own order), plus class names. Splitting,
normalization statistics and batching are done elsewhere.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from kdistill.data.errors import DataError
from kdistill.data.image_files import ImageFiles, convert_image, folder_channels, open_errors

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Split:
    """One split in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 (0..255) or float32 (0..1), or ``(N, F)`` float32 vectors;
            or :class:`ImageFiles` (the streaming pipeline: decoded on demand, uint8).
        labels: ``(N,)`` int64 class indices.
        ids: ``(N,)`` int64 stable sample ids (index in the source's order).
    """

    images: Tensor
    labels: Tensor
    ids: Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.ids.shape != (n,):
            raise DataError(
                f"split has {n} images but labels {tuple(self.labels.shape)} and ids "
                f"{tuple(self.ids.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.ids[index])


@dataclass(frozen=True)
class RawData:
    """What a reader found: a train split, a test split if the source has one, class names."""

    train: Split
    test: Split | None
    class_names: tuple[str, ...]
    source: str
    pipeline: str = "memory"  # "stream": the splits' images are ImageFiles left on disk
    pipeline_reason: str = "loaded whole"
    channels_reason: str | None = None  # what the reader decided about colour, and why


def _split(images: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> Split:
    images_t = (
        torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    )
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return Split(images_t, labels_t, torch.arange(len(labels_t), dtype=torch.int64))


def _check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{where}: labels must be in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )


# ----------------------------------------------------------------------------- digits


def read_digits() -> RawData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), ships inside the wheel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return RawData(
        train=_split(images, bunch.target),
        test=None,
        class_names=tuple(str(c) for c in bunch.target_names),
        source="sklearn.datasets.load_digits",
    )


# ----------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (as used by MNIST and Fashion-MNIST), gzipped or not."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: cannot be read or decompressed ({e}); the file is truncated or damaged: "
            "reinstall or re-copy it"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{type_code:02x} is not unsigned bytes (0x08)")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header promises {dims} = {expected} bytes but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _read_idx_dataset(base: Path, name: str, classes: tuple[str, ...], hint: str) -> RawData:
    """A dataset of the MNIST family from its four IDX files in ``base``."""
    found = {k: _find(base, s) for k, s in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        where = "it does not exist" if not base.is_dir() else f"missing {', '.join(missing)}[.gz]"
        raise DataError(
            f"{name} not found in {base} ({where}). {hint}point data.root (--data-root) at a "
            "directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped or not)."
        )
    arrays = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{base}: {part} images {x.shape} and labels {y.shape} do not match")
    train = _split(arrays["train_x"][:, None], arrays["train_y"])
    test = _split(arrays["test_x"][:, None], arrays["test_y"])
    for part, split in (("train", train), ("test", test)):
        _check_labels(split.labels, len(classes), f"{base} {part}")
    return RawData(train, test, classes, str(base))


def read_fashion_mnist(root: str | None) -> RawData:
    """Fashion-MNIST from its four IDX files (Debian package ``dataset-fashion-mnist``)."""
    return _read_idx_dataset(
        Path(root or FASHION_MNIST_DIR),
        "Fashion-MNIST",
        FASHION_MNIST_CLASSES,
        "Install it with `sudo apt-get install dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_DIR}), or ",
    )


def read_mnist(root: str | None) -> RawData:
    """MNIST from its four IDX files in ``root``, or in ``root/MNIST/raw`` where torchvision
    (and so Distiller) keeps them."""
    if root is None:
        raise DataError(
            "the mnist dataset needs data.root: the directory of its IDX files, which kdistill "
            "never downloads"
        )
    base = Path(root)
    if _find(base, IDX_FILES["train_x"]) is None and (base / "MNIST" / "raw").is_dir():
        base = base / "MNIST" / "raw"
    return _read_idx_dataset(base, "MNIST", tuple(str(i) for i in range(10)), "")


# ----------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches and nothing else: only numpy array reconstruction (and
    the bytes constructor of Python 3 pickles) is allowed, so a malicious file cannot run code."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("_codecs", "encode"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict[str, object]:
    try:
        raw = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a CIFAR python batch (expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def read_cifar(root: str | None, num_classes: int) -> RawData:
    """CIFAR-10/100 from the standard python batches (``cifar-10-batches-py``, ``cifar-100-python``)."""
    if root is None:
        raise DataError(
            f"cifar{num_classes} needs data.root: the directory of the python version of the "
            "dataset (cifar-10-batches-py/ or cifar-100-python/), which kdistill never downloads"
        )
    base = Path(root)
    sub = base / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    if sub.is_dir():
        base = sub
    if num_classes == 10:
        train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta_file, label_key, names_key = (
            [base / "test_batch"],
            base / "batches.meta",
            "labels",
            "label_names",
        )
    else:
        train_files, test_files = [base / "train"], [base / "test"]
        meta_file, label_key, names_key = base / "meta", "fine_labels", "fine_label_names"
    missing = [p.name for p in (*train_files, *test_files) if not p.is_file()]
    if missing:
        raise DataError(
            f"cifar{num_classes} batches not found in {base}: missing {', '.join(missing)}. "
            "Point data.root at the extracted python version of the dataset."
        )

    def load(files: list[Path]) -> Split:
        xs, ys = [], []
        for f in files:
            batch = _read_cifar_batch(f)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{f}: a CIFAR batch needs 'data' and {label_key!r} entries")
            x = np.asarray(batch["data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3072:
                raise DataError(f"{f}: expected data of shape (N, 3072), got {x.shape}")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        return _split(np.concatenate(xs), np.concatenate(ys))

    train, test = load(train_files), load(test_files)
    names: tuple[str, ...] = tuple(str(i) for i in range(num_classes))
    if meta_file.is_file():
        meta = _read_cifar_batch(meta_file)
        if names_key in meta:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])  # type: ignore[union-attr]
    for name, split in (("train", train), ("test", test)):
        _check_labels(split.labels, num_classes, f"{base} {name}")
    return RawData(train, test, names, str(base))


# ----------------------------------------------------------------------------- npz


def _images_from_array(x: np.ndarray, where: str) -> np.ndarray:
    """Arrays as ``(N, C, H, W)`` images, or ``(N, F)`` vectors, with dtype uint8 or float32."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: pixels must be numbers, found an array of {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{where}: holds no samples")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{where}: {bad} values are NaN or infinite; every pixel must be a number")
    if x.ndim == 2:
        return x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    else:
        raise DataError(
            f"{where}: expected (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W); got {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(
            f"{where}: float images must lie in [0, 1] (or be uint8 0..255), found {x.min()}..{x.max()}"
        )
    return x


def read_npz(root: str | None) -> RawData:
    """Arrays from an ``.npz`` file: ``x_train``, ``y_train`` and optionally ``x_test``,
    ``y_test`` and ``class_names``. Images may be uint8 (0..255) or float (0..1), laid out
    ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``; 2-D ``(N, F)`` arrays are feature vectors."""
    if root is None:
        raise DataError("the npz dataset needs data.root: the path of the .npz file")
    path = Path(root)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e or 'empty file'})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive of named arrays")

    def array(name: str) -> np.ndarray:
        try:
            return archive[name]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            # object arrays would need unpickling, which is never done
            raise DataError(f"{path}: array {name} cannot be read safely ({e})") from None

    with archive:
        keys = set(archive.files)
        if not {"x_train", "y_train"} <= keys:
            raise DataError(f"{path}: needs arrays x_train and y_train; found {sorted(keys)}")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path}: give both x_test and y_test, or neither")
        parts = {}
        for part in ("train", "test"):
            if f"x_{part}" not in keys:
                continue
            x = _images_from_array(array(f"x_{part}"), f"{path} x_{part}")
            y = array(f"y_{part}")
            if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
                raise DataError(
                    f"{path}: y_{part} must be {len(x)} integer labels, got {y.dtype} {y.shape}"
                )
            parts[part] = _split(x, y)
        names = [str(n) for n in array("class_names")] if "class_names" in keys else None
    train, test = parts["train"], parts.get("test")
    if test is not None and train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{path}: train samples {tuple(train.images.shape[1:])} and test samples {tuple(test.images.shape[1:])} differ in shape"
        )
    num_classes = (
        len(names)
        if names
        else int(max(int(train.labels.max()), int(test.labels.max()) if test else 0)) + 1
    )
    for name, split in (("train", train), ("test", test)):
        if split is not None:
            _check_labels(split.labels, num_classes, f"{path} {name}")
    return RawData(train, test, tuple(names or (str(i) for i in range(num_classes))), str(path))


# ----------------------------------------------------------------------------- image folders


def list_image_folder(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """Files of ``root/<class>/...`` in sorted (stable) order, with class indices."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subdirectories (expected {root}/<class>/<image files>)")
    items = []
    for index, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        items += [(p, index) for p in files]
    if not items:
        raise DataError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) under the class folders"
        )
    return items, tuple(classes)


def decode_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    """One image file as a ``(C, H, W)`` uint8 array, converted to ``channels`` and resized."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = convert_image(img, channels)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except open_errors() as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_folder(
    root: str | None, image_size: int | None, pipeline: str = "memory", budget: int | None = None
) -> RawData:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), or ``root/<class>/*``
    without a test split, grayscale if every training image is grayscale, else RGB, resized to
    ``image_size`` when given (without it all images must share one size).

    ``pipeline`` ``memory`` decodes every image once into memory; ``stream`` leaves them on
    disk (:class:`ImageFiles`, decoded by the streaming loader's workers); ``auto`` streams when
    the decoded training set would exceed ``budget`` bytes.
    """
    if root is None:
        raise DataError("the imagefolder dataset needs data.root: a directory of class folders")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist")
    train_dir = base / "train" if (base / "train").is_dir() else base
    test_dir = (
        next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
        if train_dir != base
        else None
    )
    train_items, classes = list_image_folder(train_dir)
    channels, channels_reason = folder_channels([p for p, _ in train_items])
    train_files = ImageFiles.from_paths(base, [p for p, _ in train_items], channels, image_size)
    reason = "asked for"
    if pipeline == "auto":
        decoded = train_files.decoded_bytes()
        stream = budget is not None and decoded > budget
        pipeline = "stream" if stream else "memory"
        limit = "unknown memory" if budget is None else f"{budget / 2**30:.1f} GiB"
        reason = (
            f"the decoded training set takes {decoded / 2**30:.2f} GiB, "
            f"{'more' if stream else 'not more'} than {limit} (a quarter of this machine's memory)"
        )

    def load(items: list[tuple[Path, int]], files: ImageFiles | None = None) -> Split:
        labels = np.array([label for _, label in items])
        if pipeline == "stream":
            if files is None:
                files = ImageFiles.from_paths(base, [p for p, _ in items], channels, image_size)
            return Split(
                files,  # type: ignore[arg-type]
                torch.as_tensor(labels, dtype=torch.int64),
                torch.arange(len(items), dtype=torch.int64),
            )
        arrays = [decode_image(p, channels, image_size) for p, _ in items]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(
                f"{base}: images have different sizes {sorted(shapes)[:3]}...; set data.image_size "
                "to resize them all"
            )
        return _split(np.stack(arrays), labels)

    train = load(train_items, train_files)
    test = None
    if test_dir is not None:
        test_items, test_classes = list_image_folder(test_dir)
        if test_classes != classes:
            raise DataError(
                f"{test_dir} has classes {list(test_classes)} but {train_dir} has {list(classes)}"
            )
        test = load(test_items)
        if test.images.shape[1:] != train.images.shape[1:]:
            raise DataError(
                f"{base}: test images {tuple(test.images.shape[1:])} differ from train images {tuple(train.images.shape[1:])}; set data.image_size"
            )
    return RawData(
        train, test, classes, str(base), pipeline=pipeline, pipeline_reason=reason,
        channels_reason=channels_reason,
    )  # fmt: skip
