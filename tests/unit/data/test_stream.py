"""The streaming image pipeline: the same batches as in memory, replayable crops of the files,
the automatic switch."""

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.config.schema import AugmentConfig, DataConfig
from kdistill.data import (
    BatchLoader,
    CropFlip,
    DataError,
    ImageFiles,
    ResizedCropFlip,
    StreamLoader,
    build_augment,
    build_data,
    loader_for,
)
from kdistill.data.sources import read_image_folder


def write_folder(root, classes=("a", "b", "c"), per_class=6, sizes=((20, 16), (13, 24))):
    """Noise images of several sizes (so resizing and cropping are exercised), as PNG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[(c + i) % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def both_pipelines(root, **data):
    memory = build_data(DataConfig(name="imagefolder", root=str(root), pipeline="memory", **data))
    stream = build_data(DataConfig(name="imagefolder", root=str(root), pipeline="stream", **data))
    return memory, stream


def test_streamed_splits_hold_files_and_give_the_same_batches_as_memory(tmp_path):
    memory, stream = both_pipelines(write_folder(tmp_path), image_size=12)
    assert isinstance(stream.train.images, ImageFiles) and stream.pipeline == "stream"
    assert memory.pipeline == "memory" and memory.pipeline_reason == "asked for"
    assert stream.input_shape == memory.input_shape == (3, 12, 12)
    assert torch.equal(stream.train.ids, memory.train.ids)
    # fewer files than the statistics sample: the statistics are exact
    np.testing.assert_allclose(stream.mean, memory.mean, rtol=1e-6)
    augment = CropFlip(2, hflip=True)
    for workers in (0, 2):  # in this process, and in DataLoader worker processes
        kwargs = dict(shuffle=True, augment=augment, seed=3, mean=memory.mean, std=memory.std)
        in_memory = BatchLoader(memory.train, 5, **kwargs)
        streamed = StreamLoader(stream.train, 5, workers=workers, **kwargs)
        for epoch in (0, 1):
            in_memory.set_epoch(epoch)
            streamed.set_epoch(epoch)
            pairs = list(zip(in_memory, streamed, strict=True))
            assert len(pairs) == len(in_memory) == 3
            for a, b in pairs:
                assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.views, b.views)
                assert torch.equal(a.targets, b.targets)
                torch.testing.assert_close(a.inputs, b.inputs, rtol=0, atol=0)


def test_loader_for_picks_the_pipeline_and_memory_refuses_files(tmp_path):
    memory, stream = both_pipelines(write_folder(tmp_path), image_size=8)
    assert type(loader_for(memory.test, 4)) is BatchLoader
    streamed = loader_for(stream.test, 4, workers=0)
    assert isinstance(streamed, StreamLoader) and streamed.workers == 0
    with pytest.raises(ValueError, match="read from files"):
        BatchLoader(stream.test, 4)
    crops = ResizedCropFlip((0.2, 1.0), (0.75, 4 / 3), 4, hflip=True)
    with pytest.raises(ValueError, match="read from files"):
        BatchLoader(memory.train, 4, augment=crops)
    with pytest.raises(ValueError, match="held in memory"):
        StreamLoader(memory.train, 4)


def test_resized_crop_views_are_fixed_per_sample_and_inside_the_image():
    crops = ResizedCropFlip((0.08, 1.0), (0.75, 4 / 3), views=8, hflip=True, seed=0)
    boxes = [crops.box(s, v, 40, 30) for s in range(50) for v in range(8)]
    assert boxes == [crops.box(s, v, 40, 30) for s in range(50) for v in range(8)]  # replayable
    assert len(set(boxes)) > 350  # distinct views
    for top, left, h, w, flip in boxes:
        assert top >= 0 and top + h <= 40 and left >= 0 and left + w <= 30 and h > 0 and w > 0
        assert flip in (0, 1)
    assert {b[4] for b in boxes} == {0, 1}
    areas = np.array([h * w / 1200 for _, _, h, w, _ in boxes])
    assert areas.min() >= 0.07 and areas.max() <= 1.0
    # another seed is another set of views; a view outside the range is an error
    other = ResizedCropFlip((0.08, 1.0), (0.75, 4 / 3), views=8, hflip=True, seed=1)
    assert other.box(0, 0, 40, 30) != crops.box(0, 0, 40, 30)
    with pytest.raises(ValueError, match="0..7"):
        crops.box(0, 8, 40, 30)
    # an impossible ratio falls back to the largest allowed centre crop
    top, left, h, w, _ = ResizedCropFlip((1.0, 1.0), (2.0, 2.0), 1, False).box(0, 0, 10, 10)
    assert (h, w) == (5, 10) and (top, left) == (2, 0)


def test_resized_crops_are_cut_from_the_files_and_replay_exactly(tmp_path):
    root = write_folder(tmp_path)
    data = build_data(
        DataConfig(
            name="imagefolder",
            root=str(root),
            image_size=8,
            augment=AugmentConfig(crop="resized", views=4, hflip=True),
        )
    )
    assert data.pipeline == "stream" and "full-resolution" in data.pipeline_reason
    crops = build_augment(AugmentConfig(crop="resized", views=4, hflip=True))
    loader = StreamLoader(data.train, 6, workers=0, shuffle=True, augment=crops, seed=1)
    positions = torch.arange(len(data.train))
    views = torch.tensor([i % 4 for i in range(len(data.train))])
    images, boxes = loader.decode(positions, views)
    assert images.shape == (len(data.train), 3, 8, 8) and images.dtype == torch.uint8
    files = data.train.images
    for p in range(len(data.train)):  # each box was drawn for that file's own size
        with Image.open(files.path(p)) as img:
            expected = crops.box(int(data.train.ids[p]), int(views[p]), img.height, img.width)
        assert tuple(boxes[p].tolist()) == expected
        assert torch.equal(images[p], torch.from_numpy(files.decode(p, expected)))
    # replaying recorded boxes gives the same pixels; a different box gives others
    recorded = {(int(i), int(v)): b for i, v, b in zip(data.train.ids, views, boxes.numpy())}

    def replay(ids, vs):
        return np.stack([recorded[(int(i), int(v))] for i, v in zip(ids, vs)])

    replayed = StreamLoader(data.train, 6, workers=2, augment=crops, replay=replay)
    again, _ = replayed.decode(positions, views)
    assert torch.equal(again, images)
    batches = list(StreamLoader(data.train, 6, workers=2, shuffle=True, augment=crops, seed=1))
    for batch in batches:  # worker processes draw the same crops as this process
        for i, v, x in zip(batch.sample_ids, batch.views, batch.inputs):
            p = int(torch.nonzero(data.train.ids == i))
            with Image.open(files.path(p)) as img:
                box = crops.box(int(i), int(v), img.height, img.width)
            pixels = torch.from_numpy(files.decode(p, box)).float() / 255
            torch.testing.assert_close(x, pixels, rtol=0, atol=0)


def test_auto_streams_above_the_memory_budget(tmp_path):
    root = write_folder(tmp_path, per_class=4)
    decoded = 12 * 3 * 8 * 8
    small = read_image_folder(str(root), 8, "auto", budget=decoded)
    assert small.pipeline == "memory" and "not more than" in small.pipeline_reason
    big = read_image_folder(str(root), 8, "auto", budget=decoded - 1)
    assert big.pipeline == "stream" and isinstance(big.train.images, ImageFiles)
    assert f"{decoded / 2**30:.2f} GiB, more than" in big.pipeline_reason


def test_streamed_files_of_different_sizes_need_image_size(tmp_path):
    root = write_folder(tmp_path)
    with pytest.raises(DataError, match="is 13x24, the first image 20x16; set data.image_size"):
        build_data(DataConfig(name="imagefolder", root=str(root), pipeline="stream"))
    files = read_image_folder(str(root), None, "stream").train.images
    files.decode(0)  # the first image's size is the size
    with pytest.raises(DataError) as caught:  # said as such, not as an unreadable file
        files.decode(1)
    assert "cannot read image" not in str(caught.value) and "set data.image_size" in str(
        caught.value
    )
    with pytest.raises(DataError, match="set data.image_size"):
        files.decode(1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (dict(name="digits", pipeline="stream"), "digits is loaded whole"),
        (dict(name="digits", augment=AugmentConfig(crop="resized")), "has none"),
        (dict(name="imagefolder", augment=AugmentConfig(crop="resized")), "needs data.image_size"),
        (
            dict(
                name="imagefolder",
                image_size=8,
                pipeline="memory",
                augment=AugmentConfig(crop="resized"),
            ),
            "stream or auto, not memory",
        ),
        (dict(name="imagefolder", pipeline="disk"), "auto, memory, stream; got 'disk'"),
        (dict(name="imagefolder", workers=-1), "data.workers must be >= 0"),
    ],
)
def test_bad_pipeline_settings_are_named(data, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**data)


def test_bad_crop_settings_are_named():
    with pytest.raises(ValueError, match="only applies to crop: pad"):
        AugmentConfig(crop="resized", crop_padding=2)
    with pytest.raises(ValueError, match="scale must be 0 < low <= high <= 1"):
        AugmentConfig(crop="resized", scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="views must be >= 1"):
        AugmentConfig(crop="resized", views=0)


def test_an_unreadable_file_is_named_without_a_worker_traceback(tmp_path):
    root = write_folder(tmp_path)
    (root / "b" / "002.png").write_bytes(b"not an image")
    files = read_image_folder(str(root), 8, "stream")  # no statistics pass: nothing decoded yet
    for workers in (0, 2):
        loader = StreamLoader(files.train, 6, workers=workers)
        with pytest.raises(DataError) as raised:
            list(loader)
        message = str(raised.value)
        assert message.startswith(f"{root / 'b' / '002.png'}: cannot read image")
        assert "Traceback" not in message and "worker" not in message
        with pytest.raises(DataError, match="002.png: cannot read image"):
            loader.decode(torch.arange(len(files.train)), None)


def test_the_streamed_cache_key_sees_files_swapped_with_their_times_kept(tmp_path):
    """Two same-size files exchanged, their modification times restored (as cp -p or tar
    would): the key changes, so the student never reads the other file's teacher outputs."""
    import os

    write_folder(tmp_path, sizes=((20, 16),))
    a, b = tmp_path / "a" / "000.png", tmp_path / "a" / "001.png"
    for path, value in ((a, 10), (b, 200)):  # uncompressed: the same size in bytes
        Image.new("RGB", (16, 20), color=(value, 0, 0)).save(path, compress_level=0)
    assert a.stat().st_size == b.stat().st_size
    before = read_image_folder(str(tmp_path), None, pipeline="stream").train.images.digest()
    assert read_image_folder(str(tmp_path), None, pipeline="stream").train.images.digest() == before
    times = [(p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (a, b)]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    os.utime(a, ns=times[0])
    os.utime(b, ns=times[1])
    after = read_image_folder(str(tmp_path), None, pipeline="stream").train.images.digest()
    assert after != before
