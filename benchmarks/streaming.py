"""The streaming image pipeline at 25k and 100k images: memory, loader speed, the teacher cache.

The script writes its own image folders (JPEG, ten tinted classes with noise), trains a small
teacher on the first, then for each size:

- builds the teacher-output cache (``kdistill cache build``: top-10 probabilities in float16 and
  the crop box of every view of a random-resized crop) and reports images/s and the bytes it
  stores per sample and view;
- trains a student for one cached epoch (``kdistill train``) while sampling the memory of its
  process tree: the peak of the training process's RSS and the peak of the tree's PSS (forked
  DataLoader workers share pages, which RSS would count twice).

It also times one pass of kdistill's streaming loader against ``torchvision.datasets.ImageFolder``
+ ``DataLoader`` with the same workers, batch size and transforms (random-resized crop, flip,
uint8 to a normalized float batch), alternating them, and reports the median ratio.

    python benchmarks/streaming.py --sizes 25000 100000 --out benchmarks/results/streaming.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import provenance, publish

CLASSES = 10
SIDE = 64


def write_folder(root: Path, n_train: int, n_test: int) -> float:
    """``root/train`` and ``root/test`` of 64x64 JPEGs; returns the seconds it took."""
    from PIL import Image

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    tints = rng.integers(30, 225, (CLASSES, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        noise = rng.normal(0, 25, (256, SIDE, SIDE, 3))
        for i in range(n):
            c = i % CLASSES
            pixels = np.clip(tints[c] + noise[i % 256], 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i:07d}.jpg", quality=90)
    return time.perf_counter() - started


def common_args(root: Path, out: Path, workers: int) -> list[str]:
    return [
        "data.name=imagefolder",
        f"data.root={root}",
        f"data.image_size={SIDE}",
        "data.pipeline=stream",
        f"data.workers={workers}",
        "data.batch_size=256",
        "data.eval_batch_size=512",
        f"out_dir={out}",
        "train.tensorboard=false",
    ]


def student_args(root: Path, out: Path, teacher: Path, workers: int, views: int) -> list[str]:
    return [
        *common_args(root, out, workers),
        "name=student",
        "model.arch=mlp",
        "model.args.hidden=[128]",
        "train.epochs=1",
        "optim.lr=0.01",
        "optim.grad_clip=1.0",
        "train.on_collapse=warn",  # the pipeline is measured here, not the student
        f"kd.teachers.0.checkpoint={teacher}",
        "kd.temperature=4",
        "kd.teacher_cache.enabled=true",
        "kd.teacher_cache.topk=10",
        "kd.teacher_cache.dtype=float16",
        "data.augment.crop=resized",
        f"data.augment.views={views}",
        "data.augment.hflip=true",
    ]


def kdistill(*args: str, sample_memory: bool = False) -> tuple[str, float, dict[str, float]]:
    """Run ``kdistill ARGS``: (its log, wall seconds, memory peaks in MiB when sampled)."""
    cmd = [sys.executable, "-m", "kdistill", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"main_rss_mib": 0.0, "tree_pss_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            main_rss, tree_pss = tree_memory(proc.pid)
            peaks["main_rss_mib"] = max(peaks["main_rss_mib"], main_rss)
            peaks["tree_pss_mib"] = max(peaks["tree_pss_mib"], tree_pss)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    log, _ = proc.communicate()
    stop.set()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kdistill {' '.join(args[:2])} failed:\n{log[-3000:]}")
    return log, elapsed, peaks


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS of ``pid``, PSS of ``pid`` and all its descendants), MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    main_rss = tree_pss = 0.0
    for p in tree:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        values = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
        tree_pss += int(values.get("Pss", 0)) / 1024
        if p == pid:
            main_rss = int(values.get("Rss", 0)) / 1024
    return main_rss, tree_pss


def loader_pass(kind: str, root: Path, workers: int, batch: int) -> float:
    """Images/s of one pass over ``root/train`` with random-resized crops and flips."""
    import torch

    from kdistill.config.schema import AugmentConfig, DataConfig
    from kdistill.data import StreamLoader, build_augment, build_data

    torch.set_num_threads(1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    if kind == "kdistill":
        augment = AugmentConfig(crop="resized", hflip=True)
        data = build_data(
            DataConfig(
                name="imagefolder",
                root=str(root),
                image_size=SIDE,
                pipeline="stream",
                augment=augment,
            )
        )
        loader = StreamLoader(
            data.train,
            batch,
            workers=workers,
            shuffle=True,
            augment=build_augment(augment),
            mean=mean,
            std=std,
        )
        started = time.perf_counter()
        n = sum(len(b.inputs) for b in loader)
        return n / (time.perf_counter() - started)
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose(
        [v2.RandomResizedCrop(SIDE, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
    )
    folder = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        folder, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=False
    )
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    started = time.perf_counter()
    n = 0
    for images, _ in loader:
        x = (images.float().div_(255) - m) / s
        n += len(x)
    return n / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[25000, 100000], help="training images per folder"
    )
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--views", type=int, default=2, help="crops stored per sample")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (both loaders)")
    p.add_argument("--rounds", type=int, default=3, help="loader passes of each kind")
    p.add_argument("--dir", help="where to write the folders (default: a temporary directory)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        report = {
            **provenance("streaming.py"),
            "image_side": SIDE,
            "views": args.views,
            "sizes": {},
        }
        teacher_out = work / "teacher-runs"
        for n in args.sizes:
            root = work / f"folder-{n}"
            written = write_folder(root, n, args.test_images)
            print(f"wrote {n:,} + {args.test_images:,} JPEGs in {written:.0f}s", file=sys.stderr)
            if not teacher_out.exists():
                kdistill(
                    "train",
                    *common_args(root, teacher_out, args.workers),
                    "name=teacher",
                    "model.arch=lenet5",
                    "train.epochs=2",
                    "optim.lr=0.02",
                    "optim.grad_clip=1.0",
                    "train.on_collapse=warn",
                )
            (teacher,) = teacher_out.glob("teacher-*/seed-0")
            runs = work / f"runs-{n}"
            student = student_args(root, runs, teacher, args.workers, args.views)
            log, _, build_peaks = kdistill("cache", "build", *student, "-q", sample_memory=True)
            built = float(re.search(r"built in ([\d.]+)s", log).group(1))
            (cache,) = [d for d in (runs / "teacher-cache").iterdir() if d.is_dir()]
            size = sum(f.stat().st_size for f in cache.iterdir())
            log, wall, peaks = kdistill("train", *student, "-q", sample_memory=True)
            epoch_s = json.loads(next(runs.glob("student-*/seed-0/summary.json")).read_text())[
                "epoch_times_s"
            ][0]
            report["sizes"][str(n)] = {
                "cache_build_img_per_s": round(n * args.views / built, 1),
                "cache_build_s": built,
                "cache_bytes": size,
                "cache_bytes_per_sample_view": round(size / (n * args.views), 1),
                "cache_build_peak_tree_pss_mib": round(build_peaks["tree_pss_mib"], 1),
                "epoch_peak_main_rss_mib": round(peaks["main_rss_mib"], 1),
                "epoch_peak_tree_pss_mib": round(peaks["tree_pss_mib"], 1),
                "epoch_s": round(epoch_s, 1),
                "epoch_img_per_s": round(n / epoch_s, 1),
                "run_wall_s": round(wall, 1),
            }
            print(json.dumps(report["sizes"][str(n)]), file=sys.stderr)
            if n == args.sizes[0]:
                speeds: dict[str, list[float]] = {"kdistill": [], "torchvision": []}
                for _ in range(args.rounds):
                    for kind in speeds:
                        speeds[kind].append(loader_pass(kind, root, args.workers, 256))
                report["loader"] = {
                    "images": n,
                    "workers": args.workers,
                    "kdistill_img_per_s": round(statistics.median(speeds["kdistill"]), 1),
                    "torchvision_img_per_s": round(statistics.median(speeds["torchvision"]), 1),
                    "ratio_kdistill_over_torchvision": round(
                        statistics.median(
                            a / b for a, b in zip(speeds["kdistill"], speeds["torchvision"])
                        ),
                        3,
                    ),
                    "rounds": args.rounds,
                }
            import shutil

            shutil.rmtree(root)  # keep the disk use to one folder at a time
        sizes = [report["sizes"][str(n)]["epoch_peak_main_rss_mib"] for n in args.sizes]
        report["rss_ratio_largest_over_smallest"] = round(sizes[-1] / sizes[0], 3)
    publish(report, args.out)


if __name__ == "__main__":
    main()
