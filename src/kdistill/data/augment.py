"""Batched, replayable augmentation: random crop with zero padding and horizontal flip.

Every augmented input is one *view* of its sample, identified by an integer that encodes the
crop offset and the flip. The same view id always gives the same pixels, so a teacher output
computed for a view can be reused later for exactly the input the student sees (the teacher-
output cache relies on this). Views are applied to whole batches with one gather, not per
sample with PIL.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from kdistill.config.schema import AugmentConfig


class CropFlip:
    """Random translation by up to ``padding`` pixels (crop of a zero-padded image) and optional
    horizontal flip.

    View ids run over ``0 .. num_views - 1`` and decode as
    ``view = (dy * (2p + 1) + dx) * flips + flip`` with ``dy, dx`` in ``0..2p`` the crop's
    top-left corner in the padded image. View ``identity_view`` is the un-augmented image.

    Args:
        padding: zero padding on each side before cropping back to the original size.
        hflip: whether views include a horizontally flipped copy.
    """

    on_files = False  # applied to whole batches, in memory or after decoding

    def __init__(self, padding: int, hflip: bool) -> None:
        if padding < 0:
            raise ValueError(f"crop padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.hflip = bool(hflip)
        self._side = 2 * self.padding + 1
        self._flips = 2 if self.hflip else 1

    @property
    def num_views(self) -> int:
        """How many distinct views each sample has."""
        return self._side * self._side * self._flips

    @property
    def identity_view(self) -> int:
        """The view that leaves the image unchanged (centre crop, no flip)."""
        return (self.padding * self._side + self.padding) * self._flips

    def describe(self) -> dict[str, int | bool]:
        """Parameters that define the views (part of a cache fingerprint)."""
        return {"kind": "crop_flip", "padding": self.padding, "hflip": self.hflip}  # type: ignore[dict-item]

    def decode(self, views: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(dy, dx, flip)`` for each view id."""
        flip = views % self._flips
        offset = views // self._flips
        return offset // self._side, offset % self._side, flip.bool()

    def random_views(self, sample_ids: Tensor, generator: torch.Generator) -> Tensor:
        """One view per sample, drawn uniformly (every offset and flip equally likely)."""
        return torch.randint(0, self.num_views, (len(sample_ids),), generator=generator)

    def apply(self, images: Tensor, views: Tensor) -> Tensor:
        """The batch ``images`` ``(N, C, H, W)`` with each sample's view applied.

        Padding is with zeros, applied to the un-normalized images (as torchvision's
        ``RandomCrop(padding=p)`` does before ``Normalize``).
        """
        if images.dim() != 4:
            raise ValueError(
                f"crop/flip augmentation needs image batches (N, C, H, W), got shape {tuple(images.shape)}"
            )
        views = views.to(images.device)
        if int(views.min()) < 0 or int(views.max()) >= self.num_views:
            raise ValueError(f"view ids must be in 0..{self.num_views - 1}")
        n, _, h, w = images.shape
        dy, dx, flip = self.decode(views)
        p = self.padding
        padded = F.pad(images, (p, p, p, p)) if p else images
        rows = dy[:, None] + torch.arange(h, device=images.device)  # (N, H)
        cols_fwd = torch.arange(w, device=images.device)
        cols = torch.where(flip[:, None], cols_fwd.flip(0), cols_fwd) + dx[:, None]  # (N, W)
        batch = torch.arange(n, device=images.device)[:, None, None]
        out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()


class ResizedCropFlip:
    """Random-resized crops of the full-resolution image, and optional horizontal flip.

    torchvision's rule (a crop of ``scale`` times the image's area and a log-uniform aspect
    ratio in ``ratio``; ten tries, then the largest centre crop within ``ratio``), but each view
    is drawn from a generator seeded by ``(seed, sample id, view)``: view ``v`` of a sample is
    always the same crop of the same file, which the teacher-output cache records and the
    student replays. Crops are taken by the streaming pipeline's workers, from the files.
    """

    on_files = True  # crops need the decoded file, not a resized copy in memory

    def __init__(
        self,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        views: int,
        hflip: bool,
        seed: int = 0,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must be 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must be 0 < low <= high, got {ratio}")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.views = int(views)
        self.hflip = bool(hflip)
        self.seed = int(seed)

    @property
    def num_views(self) -> int:
        return self.views

    def describe(self) -> dict[str, object]:
        """Parameters that define the views (part of a cache fingerprint)."""
        return {
            "kind": "resized_crop",
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "views": self.views,
            "hflip": self.hflip,
            "seed": self.seed,
        }

    def random_views(self, sample_ids: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.views, (len(sample_ids),), generator=generator)

    def box(self, sample_id: int, view: int, height: int, width: int) -> tuple[int, ...]:
        """``(top, left, crop height, crop width, flip)`` of view ``view`` of a
        ``height x width`` image."""
        if not 0 <= view < self.views:
            raise ValueError(f"view ids must be in 0..{self.views - 1}, got {view}")
        rng = np.random.default_rng([self.seed, int(sample_id), int(view)])
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        flip = int(self.hflip and rng.random() < 0.5)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w, flip
        aspect = width / height  # fallback: the largest centre crop whose ratio is allowed
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w, flip


Augment = CropFlip | ResizedCropFlip


def build_augment(cfg: AugmentConfig) -> Augment | None:
    """The configured augmentation, or ``None`` when it is off."""
    if not cfg.enabled:
        return None
    if cfg.crop == "resized":
        return ResizedCropFlip(cfg.scale, cfg.ratio, cfg.views, cfg.hflip)
    return CropFlip(cfg.crop_padding, cfg.hflip)
