"""A teacher cache for tokens: a language model's top-k tokens and log-probabilities at every
position of every block, built in chunks, checked and memory-mapped like the image cache."""

import numpy as np
import pytest
import torch

from kdistill.cache import CacheError, TeacherCache, build_cache
from kdistill.cache.store import CacheLayout
from kdistill.data.text import Document, PackedBlocks, tokenize
from kdistill.data.tokenizers import ByteTokenizer
from kdistill.files import cache_array
from kdistill.losses import sparse_token_divergence, teacher_topk
from kdistill.models.gpt import GPT

K, T, BLOCK = 8, 2.0, 16


@pytest.fixture(scope="module")
def text_blocks():
    docs = [Document(f"d{i}", f"line {i}: the quick brown fox. " * 3) for i in range(6)]
    return PackedBlocks(tokenize(docs, ByteTokenizer()), BLOCK)


def build(path, blocks, teacher, vocab, dtype="float16", **kw):
    layout = CacheLayout(
        num_samples=len(blocks), views_per_sample=1, members=1, num_classes=vocab,
        dtype=dtype, topk=K, temperature=T, block=BLOCK,
    )  # fmt: skip

    def compute(positions, _views):
        inputs, _ = blocks.batch(positions)
        with torch.no_grad():
            return teacher_topk(teacher(torch.from_numpy(inputs)), K, temperature=T)

    return build_cache(
        path, fingerprint="f" * 64, description={"test": True}, layout=layout,
        sample_ids=np.arange(len(blocks)), views=np.zeros((len(blocks), 1), np.int32),
        compute=compute, batch_size=3, progress=False, log=lambda _: None, **kw,
    )  # fmt: skip


def test_the_cache_holds_the_teachers_top_k_and_the_loss_reads_it(tmp_path, text_blocks):
    torch.manual_seed(0)
    teacher = GPT(257, BLOCK, dim=32, layers=1, heads=2).eval()
    student = GPT(257, BLOCK, dim=16, layers=1, heads=2)
    cache = build(tmp_path / "c", text_blocks, teacher, 257)
    assert cache.token_ids.dtype == np.uint16 and cache.token_logprobs.dtype == np.float16
    rows = torch.tensor([4, 0, 2])
    got = cache.lookup(rows, None)
    inputs, labels = (torch.from_numpy(a) for a in text_blocks.batch(rows.numpy()))
    with torch.no_grad():
        ids, logprobs = teacher_topk(teacher(inputs), K, temperature=T)
    assert torch.equal(got["token_ids"], ids)
    torch.testing.assert_close(got["token_logprobs"], logprobs, atol=2e-3, rtol=1e-3)
    logits = student(inputs)
    cached = sparse_token_divergence(
        logits, got["token_ids"], got["token_logprobs"], labels, temperature=T
    )
    live = sparse_token_divergence(logits, ids, logprobs, labels, temperature=T)
    torch.testing.assert_close(cached, live, rtol=2e-3, atol=1e-5)
    # reopened from disk: the same, the files checked against the manifest's checksums
    again = TeacherCache(tmp_path / "c")
    assert torch.equal(again.lookup(rows, None)["token_ids"], ids)


def test_bytes_per_token_at_k_32_and_a_large_vocabulary(tmp_path):
    layout = CacheLayout(
        num_samples=2, views_per_sample=1, members=1, num_classes=49_152, dtype="float16",
        topk=32, temperature=1.0, block=64,
    )  # fmt: skip

    def compute(positions, _views):
        ids = torch.randint(0, 49_152, (len(positions), 64, 32))
        return ids, torch.full((len(positions), 64, 32), -5.0)

    cache = build_cache(
        tmp_path / "c", fingerprint="a" * 64, description={}, layout=layout,
        sample_ids=np.arange(2), views=np.zeros((2, 1), np.int32), compute=compute,
        batch_size=2, progress=False, log=lambda _: None,
    )  # fmt: skip
    per_token = sum((cache.path / cache_array(name)).stat().st_size for name in layout.arrays) / (
        2 * 64
    )
    assert per_token <= 150  # 32 uint16 ids + 32 float16 log-probabilities, plus headers
    assert cache.token_ids.dtype == np.uint16
    wide = CacheLayout(**{**layout.__dict__, "num_classes": 128_256})
    assert wide.id_dtype == np.uint32


def test_a_damaged_token_cache_is_refused(tmp_path, text_blocks):
    torch.manual_seed(0)
    teacher = GPT(257, BLOCK, dim=16, layers=1, heads=2).eval()
    cache = build(tmp_path / "c", text_blocks, teacher, 257)
    ids = np.load(cache.path / "token_ids.npy")
    ids[0, 0, 0, 0] += 1
    np.save(cache.path / "token_ids.npy", ids)
    with pytest.raises(CacheError, match="token_ids.npy is corrupted"):
        TeacherCache(cache.path)
    with pytest.raises(ValueError, match="give topk"):
        CacheLayout(
            num_samples=1, views_per_sample=1, members=1, num_classes=9, dtype="float16", block=4
        )
