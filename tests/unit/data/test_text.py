"""Text data: documents and their split, tokens, the on-disk token cache, packed blocks."""

import json

import numpy as np
import pytest

from kdistill.data.errors import DataError
from kdistill.data.text import (
    IGNORE_INDEX,
    Document,
    PackedBlocks,
    cached_tokens,
    pydoc_documents,
    read_documents,
    split_documents,
    tokenize,
)
from kdistill.data.tokenizers import ByteTokenizer, same_tokenizer


def test_the_python_reference_splits_by_topic_with_a_fixed_rule():
    docs = pydoc_documents()
    assert len(docs) >= 70 and sum(len(d.text) for d in docs) > 300_000
    splits = split_documents(docs)
    names = {s: {d.name for d in v} for s, v in splits.items()}
    assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert not (names["train"] & names["val"])
    assert sum(len(v) for v in splits.values()) == len(docs)
    total = sum(len(d.text) for d in docs)
    for held in ("val", "test"):  # a tenth of the text each, whole topics: not much more
        share = sum(len(d.text) for d in splits[held]) / total
        assert 0.1 <= share < 0.2, (held, share)
    # the rule does not depend on the order the documents come in
    again = split_documents(docs[::-1])
    assert {s: {d.name for d in v} for s, v in again.items()} == names


def test_tokens_packing_and_prompt_masking():
    tok = ByteTokenizer()
    docs = [Document("a", "hi"), Document("b", "yo!", prompt="Q:")]
    stream = tokenize(docs, tok)
    assert stream.tokens.dtype == np.uint16
    assert stream.tokens.tolist() == [*b"hi", 256, *b"Q:", *b"yo!", 256]
    assert stream.loss.tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1]
    blocks = PackedBlocks(stream, block=4)
    assert len(blocks) == 2  # 9 tokens: two blocks of 4, each label one position later
    inputs, labels = blocks.batch([0, 1])
    assert inputs.tolist() == [[104, 105, 256, 81], [58, 121, 111, 33]]
    # the prompt's tokens ("Q:", stream positions 3 and 4) are no one's label
    assert labels.tolist() == [[105, 256, IGNORE_INDEX, IGNORE_INDEX], [121, 111, 33, 256]]
    assert blocks.tokens_with_loss() == 6
    with pytest.raises(DataError, match="do not fill one block of 9"):
        PackedBlocks(stream, block=9)


def test_the_token_cache_is_reused_and_checked(tmp_path):
    tok = ByteTokenizer()
    docs = [Document(f"d{i}", f"document number {i}. " * 5) for i in range(4)]
    first = cached_tokens(docs, tok, tmp_path)
    assert isinstance(first.tokens, np.memmap)
    again = cached_tokens(docs, tok, tmp_path)
    assert np.array_equal(first.tokens, again.tokens) and len(list(tmp_path.iterdir())) == 3
    # a changed array is not trusted: tokenized again and rewritten
    (tokens_file,) = tmp_path.glob("*.tokens.npy")
    array = np.load(tokens_file)
    array[3] += 1
    np.save(tokens_file, array)
    fixed = cached_tokens(docs, tok, tmp_path)
    assert np.array_equal(fixed.tokens, tokenize(docs, tok).tokens)
    # other text: another key, another file
    cached_tokens(docs[:2], tok, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_user_files_and_their_errors(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n")
    rows = [{"text": "one"}, {"prompt": "2+2=", "completion": "4"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = read_documents([tmp_path])
    assert [(d.name, d.prompt, d.text) for d in docs] == [
        ("a.txt", "", "plain text\n"), ("b.jsonl:1", "", "one"), ("b.jsonl:2", "2+2=", "4")
    ]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    for line, message in [
        ('{"txt": "x"}', r"bad.jsonl:2 has neither a 'text' field .*\(it has: txt\)"),
        ("{not json", r"bad.jsonl:2 is not valid JSON"),
        ('{"text": 3}', r"bad.jsonl:2: the field\(s\) text must be strings"),
        ('["text"]', r"bad.jsonl:2 is not a JSON object"),
        ('{"prompt": "p", "completion": " "}', r"bad.jsonl:2: the text \(or completion\) is empty"),
    ]:
        bad.write_text('{"text": "fine"}\n' + line + "\n")
        with pytest.raises(DataError, match=message):
            read_documents([bad])
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"empty.txt is empty"):
        read_documents([tmp_path / "empty.txt"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"must be .txt or .jsonl"):
        read_documents([tmp_path / "x.csv"])
    with pytest.raises(DataError, match="does not exist"):
        read_documents([tmp_path / "missing.txt"])
    with pytest.raises(DataError, match=r"2 document\(s\) cannot fill the train, val and test"):
        split_documents(docs[:2])


def test_a_different_tokenizer_is_refused_by_name():
    class Other(ByteTokenizer):
        identity = "hf:GPT2TokenizerFast:0123456789abcdef"

    same_tokenizer(ByteTokenizer(), ByteTokenizer())
    with pytest.raises(DataError, match="bytes-utf8\\+eos and hf:GPT2TokenizerFast"):
        same_tokenizer(ByteTokenizer(), Other())


def test_evaluation_batches_are_as_many_in_every_process():
    """A sharded model's forwards are collectives: every process evaluates as many batches,
    the extra ones taking no loss, and together they cover each block once."""
    from kdistill.data.text import TokenLoader

    stream = tokenize([Document("a", "x" * 40)], ByteTokenizer())
    blocks = PackedBlocks(stream, block=4)  # 41 tokens: 10 blocks
    loaders = [TokenLoader(blocks, 4, device="cpu", rank=r, world_size=2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]  # 5 blocks each, 2 per batch
    seen = []
    for loader in loaders:
        for batch in loader:
            kept = (batch.targets != IGNORE_INDEX).any(dim=1)
            seen += batch.sample_ids[kept].tolist()
    assert sorted(seen) == list(range(10))
    odd = PackedBlocks(tokenize([Document("a", "x" * 36)], ByteTokenizer()), block=4)  # 9
    loaders = [TokenLoader(odd, 4, device="cpu", rank=r, world_size=2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]
    last = list(loaders[1])[-1]  # rank 1 holds 4 blocks: its third batch is padding
    assert (last.targets == IGNORE_INDEX).all()
