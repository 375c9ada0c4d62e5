"""Images left on disk: the streaming pipeline's stand-in for a split's image tensor.

An :class:`ImageFiles` answers what a :class:`~kdistill.data.sources.Split` asks of its images
(how many, their decoded shape, a subset) without decoding anything; the files are decoded one at
a time, by the streaming loader's workers. The paths are one numpy byte array rather than a list
of Python strings: forked DataLoader workers then share its pages instead of copying them as
reference counts change, so memory does not grow with the dataset in every worker either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdistill.data.errors import DataError

# Training images the per-channel statistics of a streamed split are estimated from (seeded).
STATS_SAMPLES = 2048
# Pillow's modes of one channel; every other mode is decoded as colour.
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_errors() -> tuple[type[BaseException], ...]:
    """What opening or decoding an image file may raise for a bad file: an unreadable or
    damaged one (``OSError``), or one whose header claims more pixels than Pillow will decode
    (``DecompressionBombError``, a 30000x30000 PNG)."""
    from PIL import Image

    return (OSError, Image.DecompressionBombError, SyntaxError, ValueError)


def convert_image(img, channels: int):
    """A Pillow image as 8-bit grayscale (``channels`` 1) or RGB (3). 16-bit grayscale (PNG's
    ``I;16``; ``I`` holding 16-bit values) is scaled to 8 bits (a pixel of 23729 becomes 92),
    where Pillow's own conversion clips it to 255."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT:
        wide = np.asarray(img).astype(np.float32)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


def folder_channels(files: Sequence[Path]) -> tuple[int, str]:
    """1 if every image of ``files`` is grayscale, else 3, and why: decided from the data, not
    from the first file (ImageNet has grayscale JPEGs among colour ones). The headers are read
    in order until a colour image is found, so a colour folder costs a few opens."""
    from PIL import Image

    for path in files:
        try:
            with Image.open(path) as img:
                mode = img.mode
        except open_errors() as e:
            raise DataError(f"{path}: cannot read image ({e})") from None
        if mode not in GRAYSCALE_MODES:
            return 3, f"RGB: {path.name} is colour ({mode}); grayscale images are converted"
    return 1, f"grayscale: all {len(files)} training images are"


class ImageFiles:
    """``N`` image files, decoded on demand to ``(C, H, W)`` uint8.

    Args:
        root: the directory the paths are relative to.
        paths: ``(N,)`` byte strings (UTF-8), relative to ``root``.
        channels: 1 (grayscale) or 3 (RGB): what every image is converted to.
        size: ``(H, W)`` every decoded image (or crop) is resized to; ``None`` keeps each file's
            own size, which must then be the same for all (checked as each is decoded).
        first_size: ``(H, W)`` of the first file, the shape when ``size`` is ``None``.
    """

    dtype = torch.uint8

    def __init__(
        self,
        root: str | Path,
        paths: np.ndarray,
        channels: int,
        size: tuple[int, int] | None,
        first_size: tuple[int, int],
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        self.paths = paths
        self.channels = channels
        self.size = size
        self.first_size = first_size

    @classmethod
    def from_paths(
        cls, root: Path, files: Sequence[Path], channels: int, size: int | None
    ) -> ImageFiles:
        """Files under ``root`` (at least one), their first one read for its size."""
        from PIL import Image

        relative = [str(p.relative_to(root)).encode() for p in files]
        try:
            with Image.open(files[0]) as img:
                first = (img.height, img.width)
        except open_errors() as e:
            raise DataError(f"{files[0]}: cannot read image ({e})") from None
        return cls(
            root, np.array(relative), channels, None if size is None else (size, size), first
        )

    # -- what a Split asks of its images

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h, w = self.size or self.first_size
        return (len(self.paths), self.channels, h, w)

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Tensor | np.ndarray | slice) -> ImageFiles:
        """The files at ``index`` (positions), as another :class:`ImageFiles`."""
        picked = self.paths[index.cpu().numpy() if isinstance(index, Tensor) else index]
        return ImageFiles(
            self.root, np.atleast_1d(picked), self.channels, self.size, self.first_size
        )

    def decoded_bytes(self) -> int:
        """What the whole set would take decoded in memory, as uint8."""
        n, c, h, w = self.shape
        return n * c * h * w

    # -- decoding

    def path(self, i: int) -> Path:
        return self.root / self.paths[i].decode()

    def decode(self, i: int, box: Sequence[int] | None = None) -> np.ndarray:
        """File ``i`` as ``(C, H, W)`` uint8: converted, then (with ``box``, a ``(top, left,
        height, width, flip)`` crop of the full-resolution image) cropped, resized and flipped.
        Without a box the steps are those of the in-memory reader, so both pipelines give the
        same pixels."""
        return self.decode_with(i, None if box is None else (lambda height, width: box))[0]

    def decode_with(
        self, i: int, box_of: Callable[[int, int], Sequence[int]] | None
    ) -> tuple[np.ndarray, tuple[int, ...] | None]:
        """File ``i`` decoded with the box ``box_of(height, width)`` gives for its full
        resolution (one open of the file), and that box."""
        from PIL import Image

        path = self.path(i)
        box = None
        try:
            with Image.open(path) as img:
                img = convert_image(img, self.channels)
                target = self.size or self.first_size
                if box_of is not None:
                    box = tuple(int(v) for v in box_of(img.height, img.width))
                    top, left, h, w, flip = box
                    img = img.resize(
                        (target[1], target[0]), Image.BILINEAR, box=(left, top, left + w, top + h)
                    )
                    if flip:
                        img = img.transpose(Image.FLIP_LEFT_RIGHT)
                elif (img.height, img.width) != target:
                    if self.size is None:
                        raise DataError(
                            f"{path} is {img.height}x{img.width}, the first image "
                            f"{target[0]}x{target[1]}; set data.image_size to resize them all"
                        )
                    img = img.resize((target[1], target[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except DataError:
            raise  # a readable file of the wrong size: its own message, not "cannot read"
        except open_errors() as e:
            raise DataError(f"{path}: cannot read image ({e})") from None
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(chw) if chw.flags.writeable else chw.copy(), box

    def decode_many(self, positions: Sequence[int], threads: int = 1) -> Tensor:
        """``(n, C, H, W)`` uint8 of the files at ``positions`` (Pillow decodes without holding
        the GIL, so threads help)."""
        with ThreadPoolExecutor(max(1, threads)) as pool:
            arrays = list(pool.map(self.decode, [int(p) for p in positions]))
        return torch.from_numpy(np.stack(arrays))

    def stats_sample(self, seed: int = 0) -> Tensor:
        """A seeded sample of up to :data:`STATS_SAMPLES` decoded images (for statistics)."""
        n = len(self)
        if n <= STATS_SAMPLES:
            positions = np.arange(n)
        else:
            positions = np.sort(np.random.default_rng(seed).choice(n, STATS_SAMPLES, replace=False))
        return self.decode_many(positions, threads=min(8, os.cpu_count() or 1))

    def digest(self) -> str:
        """sha256 of every file's relative path, size, modification time and change time: a
        cache key that does not read the images (140 GB for ImageNet). The change time
        (``st_ctime``) is what makes it hold: a file rewritten, or swapped for another of the
        same size with its modification time restored (``cp -p``, ``tar``, ``touch -r``), gets a
        new change time, which no user tool sets back; the modification time alone let a swap
        of two files give the student the other file's teacher outputs."""
        h = hashlib.sha256()
        h.update(repr((self.channels, self.size, self.first_size)).encode())
        for rel in self.paths:
            st = os.stat(self.root / rel.decode())
            stats = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            h.update(rel + b"\0" + stats.encode() + b"\n")
        return h.hexdigest()


__all__ = ["STATS_SAMPLES", "ImageFiles"]
