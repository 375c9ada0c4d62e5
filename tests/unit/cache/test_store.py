"""The cache store on its own: layout, atomic finish, resumable build, lookups."""

import json

import numpy as np
import pytest
import torch

from kdistill.cache import (
    CacheError,
    CacheLayout,
    TeacherCache,
    build_cache,
    open_cache,
    topk_to_distribution,
)
from kdistill.cache import store as store_module


def fake_logits(rows, views, members=1, classes=4):
    """Deterministic 'teacher': logits are a function of (row, view)."""
    base = torch.as_tensor(rows, dtype=torch.float32)[:, None, None] * 0.01
    v = torch.as_tensor(views, dtype=torch.float32)[:, None, None] * 0.1
    return (
        base
        + v
        + torch.arange(members * classes, dtype=torch.float32).view(1, members, classes) * 0.2
    )


def make(path, n=10, k=3, members=1, classes=4, topk=None, calls=None, fail_after=None):
    views = np.stack([np.arange(k) * 2 + (i % 2) for i in range(n)]).astype(np.int32)
    layout = CacheLayout(
        n, k, members, classes, "float32", topk=topk, temperature=2.0 if topk else None
    )

    def compute(rows, view_ids):
        if calls is not None:
            calls.append(len(rows))
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt
        return fake_logits(rows, view_ids, members, classes)

    return build_cache(
        path,
        fingerprint="fp",
        description={"what": "test"},
        layout=layout,
        sample_ids=np.arange(100, 100 + n),
        views=views,
        compute=compute,
        batch_size=4,
        progress=False,
        log=lambda _: None,
    )


def test_round_trip(tmp_path):
    cache = make(tmp_path / "c")
    ids = torch.tensor([105, 100, 109])
    views = torch.tensor([2 * 1 + 1, 0, 2 * 2 + 1])  # stored views of those rows
    got = cache.lookup(ids, views)["logits"]
    expected = fake_logits(np.array([5, 0, 9]), views.numpy())
    torch.testing.assert_close(got, expected)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["fingerprint"] == "fp"
    assert not (tmp_path / "c.partial").exists()


def test_view_sampler_draws_only_stored_views(tmp_path):
    cache = make(tmp_path / "c", n=10, k=3)
    sampler = cache.view_sampler()
    ids = torch.arange(100, 110).repeat(50)
    views = sampler(ids, torch.Generator().manual_seed(0))
    stored = cache.views[ids.numpy() - 100]
    assert all(v in row for v, row in zip(views.tolist(), stored.tolist()))
    assert len(set(views[ids == 100].tolist())) == 3  # every stored view gets used


def test_lookup_errors(tmp_path):
    cache = make(tmp_path / "c")
    with pytest.raises(CacheError, match=r"no outputs for sample ids \[7\]"):
        cache.lookup(torch.tensor([7]), torch.tensor([0]))
    with pytest.raises(CacheError, match="does not store the requested augmentation view"):
        cache.lookup(torch.tensor([100]), torch.tensor([1]))
    with pytest.raises(CacheError, match="no views"):
        cache.lookup(torch.tensor([100]), None)


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHUNK_SAMPLES", 2)  # 5 chunks of 2 samples x 3 views
    calls = []
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "c", calls=calls, fail_after=4)  # dies inside the third chunk
    assert not (tmp_path / "c").exists(), "an unfinished cache is never visible"
    assert open_cache(tmp_path / "c", "fp") is None
    progress = json.loads((tmp_path / "c.partial" / "progress.json.0").read_text())
    assert progress["done_chunks"] == [0, 1]
    resumed_calls = []
    cache = make(tmp_path / "c", calls=resumed_calls)
    assert sum(resumed_calls) == 6 * 3  # only the three remaining chunks were computed
    fresh = make(tmp_path / "fresh")
    np.testing.assert_array_equal(np.asarray(cache.logits), np.asarray(fresh.logits))


def test_open_cache_checks_the_fingerprint(tmp_path):
    make(tmp_path / "c")
    assert open_cache(tmp_path / "c", "fp").fingerprint == "fp"
    with pytest.raises(CacheError, match="needs other"):
        open_cache(tmp_path / "c", "other")
    with pytest.raises(CacheError, match="not a finished teacher cache"):
        TeacherCache(tmp_path / "nothing")


def test_topk_cache_keeps_a_distribution(tmp_path):
    cache = make(tmp_path / "c", classes=6, topk=2)
    got = cache.lookup(torch.tensor([100, 101]), torch.tensor([0, 1]))
    probs = topk_to_distribution(got["topk_values"], got["topk_indices"], 6)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    expected = torch.softmax(
        fake_logits(np.array([0, 1]), np.array([0, 1]), classes=6)[:, 0] / 2.0, dim=1
    )
    top = expected.topk(2, dim=1)
    torch.testing.assert_close(probs.gather(1, top.indices), top.values)
    rest = (1 - top.values.sum(1, keepdim=True)) / 4
    others = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top.indices, False)
    torch.testing.assert_close(probs[others].view(2, 4), rest.expand(2, 4))
