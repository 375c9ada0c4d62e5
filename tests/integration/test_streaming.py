"""Distillation on a streamed image folder: random-resized crops of the files, a top-k cache
that records each view's crop, and a student that replays exactly what the teacher saw."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.cli.main import main
from kdistill.config import RunConfig, apply_overrides
from kdistill.data import ImageFiles, StreamLoader, build_data
from kdistill.experiment import build_teacher, build_train_loader, code_trust, prepare_teacher_cache
from kdistill.teachers.cached import CachedTeacher

from .conftest import FAST

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def colour_folder(root, per_class=24):
    """Three classes of noisy, tinted images of two sizes, train/ and test/ (JPEG)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (28, 22) if i % 2 else (20, 30)
                noise = rng.normal(0, 40, (h, w, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


STREAM = [
    "data.name=imagefolder",
    "data.image_size=16",
    "data.pipeline=stream",
    "data.workers=1",
    "data.batch_size=8",
]


@pytest.fixture(scope="module")
def folder_teacher(tmp_path_factory):
    """A LeNet-5 trained on the streamed folder through the CLI."""
    root = colour_folder(tmp_path_factory.mktemp("folder"))
    out = tmp_path_factory.mktemp("teacher-runs")
    args = [f"data.root={root}", *STREAM, f"out_dir={out}", "name=teacher", "model.arch=lenet5"]
    assert main(["train", *args, "train.epochs=4", *FAST]) == 0
    (run_dir,) = out.glob("teacher-*/seed-0")
    summary = json.loads((run_dir / "summary.json").read_text())
    return root, run_dir, summary


def student_config(root, teacher_dir, out, *extra):
    return apply_overrides(
        RunConfig(),
        [
            f"data.root={root}",
            *STREAM,
            f"out_dir={out}",
            "model.arch=mlp",
            "model.args.hidden=[32]",
            "train.epochs=2",
            *FAST,
            f"kd.teachers.0.checkpoint={teacher_dir}",
            "kd.temperature=4",
            "kd.teacher_cache.enabled=true",
            "kd.teacher_cache.topk=2",
            "kd.teacher_cache.dtype=float16",
            "data.augment.crop=resized",
            "data.augment.views=3",
            "data.augment.scale=[0.3,1.0]",
            "data.augment.hflip=true",
            *extra,
        ],
    )


def test_a_streamed_teacher_trains_and_records_its_pipeline(folder_teacher):
    _, _, summary = folder_teacher
    assert summary["epochs"] == 4
    assert summary["data_pipeline"] == "stream (asked for)"
    assert summary["test_top1"] > 0.5  # the tint is easy to learn


def test_the_cache_records_crops_and_the_student_replays_them(folder_teacher, tmp_path):
    root, teacher_dir, _ = folder_teacher
    cfg = student_config(root, teacher_dir, tmp_path)
    data = build_data(cfg.data)
    assert isinstance(data.train.images, ImageFiles)
    teacher = build_teacher(cfg, data, lambda _: None, code_trust(cfg))
    cache = prepare_teacher_cache(
        cfg, data, teacher, torch.device("cpu"), progress=False, log=lambda _: None
    )
    assert cache.layout.crops and cache.layout.views_per_sample == 3
    assert np.asarray(cache.topk_values).dtype == np.float16
    crops = np.asarray(cache.crops)
    assert crops.shape == (len(data.train), 3, 5) and (crops[..., 2:4] > 0).all()
    loader = build_train_loader(cfg, data, torch.device("cpu"), cache=cache)
    assert isinstance(loader, StreamLoader) and loader.replay is not None
    cached = CachedTeacher(cache, temperature=4.0)
    for batch in loader:  # the live teacher on the replayed crops agrees with the cache
        live = torch.softmax(teacher.live(batch.inputs).logits / 4.0, dim=1)
        got = cached(batch.inputs, sample_ids=batch.sample_ids, views=batch.views).probs
        top = live.topk(2, dim=1)
        torch.testing.assert_close(got.gather(1, top.indices), top.values, rtol=2e-3, atol=2e-3)


def test_streamed_distillation_runs_end_to_end_and_reuses_its_cache(folder_teacher, tmp_path):
    root, teacher_dir, _ = folder_teacher
    cfg = student_config(root, teacher_dir, tmp_path)
    lines = []
    from kdistill.experiment import run

    result = run(cfg, progress=False, log=lines.append)
    assert any(line.startswith("data pipeline: stream") for line in lines)
    assert any("computing" in line and "3 view(s)" in line for line in lines)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["data_pipeline"].startswith("stream")
    again = []
    run(apply_overrides(cfg, ["train.epochs=3"]), progress=False, log=again.append)
    assert any(line.startswith("teacher cache: reading") for line in again)
    assert not any("computing" in line for line in again)


def test_two_processes_build_the_crop_cache_together_and_train(folder_teacher, tmp_path):
    """Data-parallel: both processes build their chunks of the cache (crop boxes included),
    then each streams its share of every batch."""
    import subprocess
    import sys

    root, teacher_dir, _ = folder_teacher
    cfg = student_config(root, teacher_dir, tmp_path)
    config = tmp_path / "student.yaml"
    from kdistill.config import dump_yaml

    config.write_text(dump_yaml(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "kdistill", "train", str(config), "--nproc", "2", "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (cache_dir,) = [d for d in (tmp_path / "teacher-cache").iterdir() if d.is_dir()]
    crops = np.load(cache_dir / "crops.npy")
    assert crops.shape[1:] == (3, 5) and (crops[..., 2:4] > 0).all()  # every row was computed
    summary = json.loads(next(tmp_path.glob("*/seed-0/summary.json")).read_text())
    assert summary["data_pipeline"] == "stream (asked for)"
