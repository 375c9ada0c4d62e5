"""The teacher-output store: write once (resumably), read many times (memory-mapped).

Layout of a finished cache directory::

    manifest.json        format version, fingerprint and what it was computed from, shapes,
                         and the sha256 of every array file (verified when the cache is opened)
    sample_ids.npy       (N,)  int64  the training samples, in row order
    views.npy            (N, K) int32 the augmentation views stored for each sample
    logits.npy           (N, K, M, C) float16/32: every member's logits   (full caches)
    topk_values.npy      (N, K, k) probabilities at the cache's temperature  (top-k caches)
    topk_indices.npy     (N, K, k) int32 their classes
    crops.npy            (N, K, 5) int32 (top, left, height, width, flip) of each view's crop of
                         the full-resolution file (caches of random-resized crops)
    token_ids.npy        (N, K, L, k) uint16/uint32 a language model's k most likely tokens at
                         each of a block's L positions (token caches; N blocks, K = 1)
    token_logprobs.npy   (N, K, L, k) float16/32 their log-probabilities at the temperature

A build writes into ``<dir>.partial/`` and records finished chunks in ``progress.json`` after
flushing them, so an interrupted build continues where it stopped. Only when every chunk is
done is the manifest written and the directory renamed to its final name: a reader never sees
a half-written cache, because it only opens directories that have a manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm.auto import tqdm

from kdistill.files import (
    CACHE_MANIFEST,
    CACHE_PROGRESS,
    ArtifactError,
    atomic_write_text,
    cache_array,
    read_json,
    sha256_file,
    verify_file,
)
from kdistill.losses.ensemble import merged_probabilities
from kdistill.validation import normalized_weights

CACHE_FORMAT_VERSION = 2  # 2: the manifest records the sha256 of every array file
MANIFEST = CACHE_MANIFEST
PROGRESS = CACHE_PROGRESS  # one per process: progress.json.<rank>
# Samples per resumable chunk (with all their views); KDISTILL_CACHE_CHUNK overrides it (tests).
CHUNK_SAMPLES = int(os.environ.get("KDISTILL_CACHE_CHUNK", "2048"))


ComputeBatches = Callable[[list[tuple[np.ndarray, np.ndarray]]], Iterable[Any]]
"""``[(positions, view ids), ...] -> results in order`` (see :func:`build_cache`)."""


class CacheError(ArtifactError):
    """A cache that is missing, incomplete, corrupted, or was made from something else."""


class DamagedCacheError(CacheError):
    """A finished cache that cannot be used as it is: files missing, changed or unreadable, or
    another format. ``problem`` says what, without the remedy the message ends with."""

    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.problem = message.split(f"; {remedy}")[0]


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


@dataclass(frozen=True)
class CacheLayout:
    """What a cache holds (decided before building; recorded in the manifest)."""

    num_samples: int
    views_per_sample: int
    members: int
    num_classes: int
    dtype: str  # "float16" | "float32"
    topk: int | None = None
    # Top-k caches store the merged members' probabilities at this temperature, so how the
    # members merge is fixed at build time too. Full caches keep every member's logits.
    temperature: float | None = None
    reduce: str = "probs"
    weights: tuple[float, ...] | None = None
    # Views that are crops of the image files: the crop box of every stored view is recorded,
    # so the student replays exactly what the teacher saw.
    crops: bool = False
    # Token caches: a language model's top-k tokens and log-probabilities at every one of the
    # ``block`` positions of each sample (a block of text); ``num_classes`` is the vocabulary.
    block: int | None = None

    def __post_init__(self) -> None:
        if self.block is not None and self.topk is None:
            raise ValueError("a token cache (block) stores the top-k tokens: give topk")

    @property
    def kind(self) -> str:
        if self.block is not None:
            return "token_topk"
        return "logits" if self.topk is None else "topk_probs"

    @property
    def arrays(self) -> tuple[str, ...]:
        """The arrays computed by the build (besides sample ids and views)."""
        if self.block is not None:
            return ("token_ids", "token_logprobs")
        outputs = ("logits",) if self.topk is None else ("topk_values", "topk_indices")
        return (*outputs, "crops") if self.crops else outputs

    @property
    def id_dtype(self) -> np.dtype:
        """Token ids in the smallest unsigned type that holds the vocabulary."""
        return np.dtype(np.uint16 if self.num_classes <= 2**16 else np.uint32)


def _load_array(path: Path, remedy: str, *, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array (never unpickled), or a :class:`CacheError` naming the file."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        # a plain ndarray over the same mapped pages: indexing it skips np.memmap's Python-level
        # __getitem__ (tens of microseconds per lookup, every training step)
        return array.view(np.ndarray) if mmap else array
    except (OSError, ValueError) as e:
        raise CacheError(f"teacher-cache file {path} cannot be read ({e}); {remedy}") from None


class TeacherCache:
    """A finished cache, opened read-only and memory-mapped.

    Use :meth:`lookup` to fetch the stored outputs of ``(sample id, view)`` pairs and
    :meth:`view_sampler` to make the data pipeline pick only views that are stored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(f"{self.path} is not a finished teacher cache (no {MANIFEST})")
        remedy = f"delete {self.path} (or run kdistill cache build --rebuild) to rebuild it"
        try:
            self._open(manifest_path, remedy)
        except CacheError as e:
            raise DamagedCacheError(str(e), remedy) from None
        # id -> row: sample ids are dataset indices, so a dense table is small and O(1).
        self._row_of = np.full(
            int(self.sample_ids.max()) + 1 if len(self.sample_ids) else 0, -1, np.int64
        )
        self._row_of[self.sample_ids] = np.arange(len(self.sample_ids))

    def _open(self, manifest_path: Path, remedy: str) -> None:
        """Read and check the manifest, the files' checksums and the arrays' shapes."""
        try:
            self.manifest = read_json(manifest_path, "teacher-cache manifest")
        except ArtifactError as e:
            raise CacheError(f"{e}; {remedy}") from None
        if not isinstance(self.manifest, dict):
            raise CacheError(f"{manifest_path} must hold a JSON object; {remedy}")
        if self.manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise CacheError(
                f"{self.path}: cache format {self.manifest.get('format_version')}, this kdistill "
                f"reads {CACHE_FORMAT_VERSION}; {remedy}"
            )
        try:
            raw = dict(self.manifest["layout"])
            raw["weights"] = None if raw.get("weights") is None else tuple(raw["weights"])
            self.layout = CacheLayout(**raw)
            self.fingerprint: str = self.manifest["fingerprint"]
            checksums: dict[str, str] = dict(self.manifest["files"])
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{manifest_path} is malformed ({e}); {remedy}") from None
        expected = {cache_array(n) for n in ("sample_ids", "views", *self.layout.arrays)}
        if set(checksums) != expected:
            raise CacheError(
                f"{manifest_path} lists the files {sorted(checksums)}, expected {sorted(expected)}; "
                f"{remedy}"
            )
        for name, digest in checksums.items():
            try:
                verify_file(self.path / name, digest, "teacher-cache file", remedy)
            except ArtifactError as e:
                raise CacheError(str(e)) from None
        self.sample_ids = _load_array(self.path / cache_array("sample_ids"), remedy)
        self.views = _load_array(self.path / cache_array("views"), remedy, mmap=True)
        if self.layout.block is not None:
            for name in self.layout.arrays:
                setattr(self, name, _load_array(self.path / cache_array(name), remedy, mmap=True))
        elif self.layout.topk is None:
            self.logits = _load_array(self.path / cache_array("logits"), remedy, mmap=True)
        else:
            self.topk_values = _load_array(
                self.path / cache_array("topk_values"), remedy, mmap=True
            )
            self.topk_indices = _load_array(
                self.path / cache_array("topk_indices"), remedy, mmap=True
            )
        if self.layout.crops:
            self.crops = _load_array(self.path / cache_array("crops"), remedy, mmap=True)
        self._check_shapes(remedy)

    def _check_shapes(self, remedy: str) -> None:
        """The arrays have the shapes and dtypes the manifest's layout says."""
        lay = self.layout
        n, k = lay.num_samples, lay.views_per_sample
        width = lay.topk or 0
        expected = {
            "sample_ids": ((n,), ("int64",)),
            "views": ((n, k), ("int32",)),
            "logits": ((n, k, lay.members, lay.num_classes), ("float16", "float32")),
            "topk_values": ((n, k, width), ("float16", "float32")),
            "topk_indices": ((n, k, width), ("int32",)),
            "crops": ((n, k, 5), ("int32",)),
            "token_ids": ((n, k, lay.block, width), (str(lay.id_dtype),)),
            "token_logprobs": ((n, k, lay.block, width), ("float16", "float32")),
        }
        for name in ("sample_ids", "views", *lay.arrays):
            array = getattr(self, name)
            shape, dtypes = expected[name]
            if array.shape != shape or str(array.dtype) not in dtypes:
                raise CacheError(
                    f"teacher-cache file {self.path / (name + '.npy')} holds {array.dtype} "
                    f"{array.shape}, the manifest's layout needs {' or '.join(dtypes)} {shape}; "
                    f"{remedy}"
                )

    def rows(self, sample_ids: Tensor) -> np.ndarray:
        """Row of each sample id; an id the cache does not hold is an error."""
        ids = sample_ids.cpu().numpy()
        inside = (ids >= 0) & (ids < len(self._row_of))
        rows = np.full(ids.shape, -1, np.int64)
        rows[inside] = self._row_of[ids[inside]]
        if (rows < 0).any():
            missing = ids[rows < 0][:5].tolist()
            raise CacheError(
                f"{self.path} holds no outputs for sample ids {missing}: it was built for other data"
            )
        return rows

    def slots(self, rows: np.ndarray, views: Tensor | None) -> np.ndarray:
        """Which stored view (0..K-1) of each row is ``views``."""
        if views is None:
            if self.layout.views_per_sample != 1:
                raise CacheError(
                    f"{self.path} stores {self.layout.views_per_sample} augmentation views per sample "
                    "but the batch has no views: the data pipeline and the cache disagree"
                )
            return np.zeros(len(rows), np.int64)
        stored = np.asarray(self.views[rows])  # (B, K)
        match = stored == views.cpu().numpy()[:, None]
        if not match.any(axis=1).all():
            raise CacheError(
                f"{self.path} does not store the requested augmentation view for some samples"
            )
        return match.argmax(axis=1)

    def lookup(self, sample_ids: Tensor, views: Tensor | None) -> dict[str, Tensor]:
        """Stored outputs for each ``(sample id, view)``: ``{"logits": (B, M, C)}``,
        ``{"topk_values": (B, k), "topk_indices": (B, k)}``, or for a token cache
        ``{"token_ids": (B, L, k), "token_logprobs": (B, L, k)}`` (float32 / int64 tensors)."""
        rows = self.rows(sample_ids)
        slots = self.slots(rows, views)
        if self.layout.block is not None:
            return {
                "token_ids": torch.from_numpy(
                    np.asarray(self.token_ids[rows, slots], dtype=np.int64)
                ),
                "token_logprobs": torch.from_numpy(
                    np.asarray(self.token_logprobs[rows, slots], dtype=np.float32)
                ),
            }
        if self.layout.topk is None:
            return {
                "logits": torch.from_numpy(np.asarray(self.logits[rows, slots], dtype=np.float32))
            }
        return {
            "topk_values": torch.from_numpy(
                np.asarray(self.topk_values[rows, slots], dtype=np.float32)
            ),
            "topk_indices": torch.from_numpy(
                np.asarray(self.topk_indices[rows, slots], dtype=np.int64)
            ),
        }

    def crop_boxes(self, sample_ids: Tensor, views: Tensor) -> np.ndarray:
        """``(B, 5)`` the recorded crop box of each ``(sample id, view)`` (crop caches)."""
        if not self.layout.crops:
            raise CacheError(f"{self.path} records no crops: its views are not crops of files")
        rows = self.rows(sample_ids)
        return np.asarray(self.crops[rows, self.slots(rows, views)])

    def view_sampler(self) -> Callable[[Tensor, torch.Generator], Tensor]:
        """A view sampler for the data pipeline: one of each sample's stored views, uniformly."""
        k = self.layout.views_per_sample

        def sample(sample_ids: Tensor, generator: torch.Generator) -> Tensor:
            rows = self.rows(sample_ids)
            slot = torch.randint(0, k, (len(rows),), generator=generator).numpy()
            return torch.from_numpy(np.asarray(self.views[rows, slot], dtype=np.int64))

        return sample

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def open_cache(path: str | Path, fingerprint: str) -> TeacherCache | None:
    """The finished cache at ``path`` if its fingerprint is ``fingerprint``; ``None`` if there is
    none. A cache of something else raises :class:`CacheError` naming both fingerprints."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return None
    cache = TeacherCache(path)
    if cache.fingerprint != fingerprint:
        raise CacheError(
            f"{path} holds teacher outputs with fingerprint {cache.fingerprint[:16]}, but this run "
            f"needs {fingerprint[:16]} (another teacher, data, preprocessing or view setting)"
        )
    return cache


def build_cache(
    path: str | Path,
    *,
    fingerprint: str,
    description: Mapping[str, Any],
    layout: CacheLayout,
    sample_ids: np.ndarray,
    views: np.ndarray,
    compute: Callable[[np.ndarray, np.ndarray], Any] | None,
    batch_size: int,
    progress: bool = True,
    log: Callable[[str], None] = print,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    compute_batches: ComputeBatches | None = None,
) -> TeacherCache:
    """Compute and store the teacher's outputs for every ``(sample, stored view)``.

    Args:
        path: final cache directory.
        fingerprint: the fingerprint the finished cache will carry.
        description: what the fingerprint was computed from (kept in the manifest for humans).
        layout: shapes and storage settings.
        sample_ids: ``(N,)`` ids of the samples, in row order.
        views: ``(N, K)`` the views to store for each sample.
        compute: ``(positions, view ids) -> (B, M, C)`` teacher logits for the samples at
            ``positions`` (row indices) seen as those views; for a layout with ``crops``, a
            pair ``(logits, (B, 5) crop boxes used)``; for a token cache, the pair ``(ids,
            log-probabilities)`` of the top-k tokens at every position, each ``(B, L, k)``.
        compute_batches: instead of ``compute``, the results of a whole chunk's batches
            ``[(positions, view ids), ...]``, yielded in order (so that the caller can decode
            ahead, in worker processes, while the teacher computes).
        batch_size: samples per teacher call.
        progress, log: progress bar and messages.
        rank, world_size, barrier: in a data-parallel run every process calls this; each
            computes every ``world_size``-th missing chunk, writing its own rows of the shared
            files, and process 0 finishes the cache.
    """
    if (compute is None) == (compute_batches is None):
        raise ValueError("build_cache needs exactly one of compute and compute_batches")
    if compute_batches is None:
        one_by_one = compute

        def compute_batches(batches: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[Any]:
            return (one_by_one(p, v) for p, v in batches)  # type: ignore[misc]

    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    n, k = views.shape
    chunks = [(lo, min(lo + CHUNK_SAMPLES, n)) for lo in range(0, n, CHUNK_SAMPLES)]
    if rank == 0:
        done = _resume_state(partial, fingerprint, log)
        if not done:  # a fresh build: create the files (every process then opens them)
            _allocate(partial, layout, sample_ids, views, fresh=True)
    barrier()
    done = _done_chunks(partial, fingerprint)
    arrays = _allocate(partial, layout, sample_ids, views, fresh=False)
    mine = [i for i in range(len(chunks)) if i not in done][rank::world_size]
    recorded = _done_chunks(partial, fingerprint, only_rank=rank)
    total = sum((chunks[i][1] - chunks[i][0]) * k for i in mine)
    with tqdm(
        total=total,
        desc="teacher cache",
        unit="img",
        disable=not (progress and sys.stderr.isatty()),  # no bar frames in redirected logs
        dynamic_ncols=True,
    ) as bar:
        for i in mine:
            lo, hi = chunks[i]
            _fill_chunk(arrays, layout, views, lo, hi, compute_batches, batch_size, bar)
            for array in arrays.values():
                array.flush()
            recorded.add(i)
            _write_json_atomic(
                partial / f"{PROGRESS}.{rank}",
                {"fingerprint": fingerprint, "done_chunks": sorted(recorded)},
            )
    del arrays  # close the memory maps before the rename
    barrier()
    if rank == 0:
        missing = set(range(len(chunks))) - _done_chunks(partial, fingerprint)
        if missing:
            raise CacheError(
                f"teacher cache build in {partial} is missing chunks {sorted(missing)[:5]}"
            )
        names = [cache_array(n) for n in ("sample_ids", "views", *layout.arrays)]
        _write_json_atomic(
            partial / MANIFEST,
            {
                "format_version": CACHE_FORMAT_VERSION,
                "fingerprint": fingerprint,
                "description": dict(description),
                "layout": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in layout.__dict__.items()
                },
                "files": {name: sha256_file(partial / name) for name in names},
            },
        )
        for p in partial.glob(f"{PROGRESS}.*"):
            p.unlink()
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    barrier()
    return TeacherCache(final)


def _done_chunks(partial: Path, fingerprint: str, only_rank: int | None = None) -> set[int]:
    """Chunks recorded as finished by the processes of earlier or current builds."""
    pattern = f"{PROGRESS}.{only_rank}" if only_rank is not None else f"{PROGRESS}.*"
    done: set[int] = set()
    for p in partial.glob(pattern):
        try:
            state = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if state.get("fingerprint") == fingerprint:
            done |= set(state.get("done_chunks", []))
    return done


def _resume_state(partial: Path, fingerprint: str, log: Callable[[str], None]) -> set[int]:
    """What an interrupted build left: its finished chunks, or nothing (then it is cleared)."""
    if not partial.exists():
        return set()
    records = list(partial.glob(f"{PROGRESS}.*"))
    done = _done_chunks(partial, fingerprint)
    if not done:
        if records:
            log(f"discarding an interrupted cache build of something else in {partial}")
        shutil.rmtree(partial)
        return set()
    log(f"resuming the interrupted cache build in {partial} ({len(done)} chunks already done)")
    return done


def _allocate(
    partial: Path, layout: CacheLayout, sample_ids: np.ndarray, views: np.ndarray, *, fresh: bool
) -> dict[str, np.memmap]:
    n, k = views.shape
    dtype = np.float16 if layout.dtype == "float16" else np.float32
    shapes: dict[str, tuple[tuple[int, ...], Any]]
    if layout.block is not None:
        per_sample = (n, k, layout.block, layout.topk or 0)
        shapes = {
            "token_ids": (per_sample, layout.id_dtype),
            "token_logprobs": (per_sample, dtype),
        }
    elif layout.topk is None:
        shapes = {"logits": ((n, k, layout.members, layout.num_classes), dtype)}
    else:
        shapes = {
            "topk_values": ((n, k, layout.topk), dtype),
            "topk_indices": ((n, k, layout.topk), np.int32),
        }
    if layout.crops:
        shapes["crops"] = ((n, k, 5), np.int32)
    if fresh:
        partial.mkdir(parents=True, exist_ok=True)
        np.save(partial / cache_array("sample_ids"), sample_ids.astype(np.int64))
        np.save(partial / cache_array("views"), views.astype(np.int32))
        return {
            name: open_memmap(partial / cache_array(name), mode="w+", dtype=dt, shape=shape)
            for name, (shape, dt) in shapes.items()
        }
    return {name: open_memmap(partial / cache_array(name), mode="r+") for name in shapes}


def _fill_chunk(
    arrays: dict[str, np.memmap],
    layout: CacheLayout,
    views: np.ndarray,
    lo: int,
    hi: int,
    compute_batches: ComputeBatches,
    batch_size: int,
    bar: tqdm,
) -> None:
    k = views.shape[1]
    # every (row, slot) pair of the chunk, in batches of batch_size
    rows = np.repeat(np.arange(lo, hi), k)
    slots = np.tile(np.arange(k), hi - lo)
    cut = [
        (rows[start : start + batch_size], slots[start : start + batch_size])
        for start in range(0, len(rows), batch_size)
    ]
    results = compute_batches([(r, views[r, s]) for r, s in cut])
    for (r, s), logits in zip(cut, results, strict=True):
        if layout.block is not None:  # (ids, log-probabilities), each (B, L, k)
            ids, logprobs = logits
            arrays["token_ids"][r, s] = ids.cpu().numpy().astype(layout.id_dtype)
            arrays["token_logprobs"][r, s] = logprobs.float().cpu().numpy()
            bar.update(len(r))
            continue
        if layout.crops:
            logits, boxes = logits
            arrays["crops"][r, s] = np.asarray(boxes, dtype=np.int32)
        logits = logits.float()  # (B, M, C)
        if layout.topk is None:
            arrays["logits"][r, s] = logits.cpu().numpy()
        else:
            weights = normalized_weights(layout.weights, layout.members)
            probs = merged_probabilities(logits, weights, layout.reduce, layout.temperature)  # type: ignore[arg-type]
            values, indices = probs.topk(layout.topk, dim=1)
            arrays["topk_values"][r, s] = values.cpu().numpy()
            arrays["topk_indices"][r, s] = indices.cpu().numpy()
        bar.update(len(r))


def topk_to_distribution(values: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    """Full ``(B, C)`` distributions from top-k probabilities: the remaining mass
    ``1 - sum(top-k)`` is spread evenly over the other classes, so each row sums to 1."""
    b, k = values.shape
    rest = (1.0 - values.sum(dim=1, keepdim=True)).clamp(min=0.0)
    others = num_classes - k
    fill = rest / others if others > 0 else torch.zeros_like(rest)
    probs = fill.expand(b, num_classes).clone()
    probs.scatter_(1, indices, values)
    if others == 0:
        probs = probs / probs.sum(dim=1, keepdim=True)
    return probs
