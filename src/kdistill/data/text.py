"""Text for language-model distillation: documents, their split, tokens, and packed blocks.

The embedded default is the Python language reference that ships inside every CPython
(``pydoc_data.topics``: 79 topics, about 465,000 characters), one document per topic. The
user's own text: ``.txt`` files (one document each) and ``.jsonl`` files, one document per line
with a ``text`` field, or ``prompt`` and ``completion`` fields, where the prompt's tokens are
read by the model but left out of every loss.

Documents go to train / validation / test by a fixed rule on their names (a hash, so adding a
document never moves another), are tokenized with the run's tokenizer, and are packed into one
stream with an end-of-text token after each document; the stream is cut into blocks of
``block`` tokens (inputs) and the same blocks shifted by one (labels; ``-100`` where no loss is
taken). A tokenized split is cached on disk as flat arrays, keyed by the tokenizer and the
documents' text, and memory-mapped when read: memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.data.errors import DataError
from kdistill.data.tokenizers import Tokenizer
from kdistill.files import atomic_path, atomic_write_text, canonical_json, read_json, sha256_bytes
from kdistill.types import IGNORE_INDEX, Batch

SPLITS = ("train", "val", "test")
TOKENS_FORMAT = 1


@dataclass(frozen=True)
class Document:
    """One document: ``name`` says where it came from (a topic, ``file.txt``,
    ``file.jsonl:12``); ``prompt`` (may be empty) precedes ``text`` and takes no loss."""

    name: str
    text: str
    prompt: str = ""


def pydoc_documents() -> list[Document]:
    """The Python language reference shipped with CPython, one document per topic."""
    from pydoc_data.topics import topics

    return [Document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


HELD_OUT_SHARE = 0.1  # of the text's characters, for validation and for test each


def _hash_order(doc: Document) -> bytes:
    return hashlib.sha256(doc.name.encode("utf-8")).digest()


def split_documents(documents: Sequence[Document]) -> dict[str, list[Document]]:
    """``{"train": [...], "val": [...], "test": [...]}`` by a fixed rule: the documents in the
    order of the sha256 of their names (a shuffle no one chose) go to test until it holds a
    tenth of the characters, then to validation until it holds another tenth, and the rest to
    training. Whole documents (a topic never spans two splits), and by size, not by count:
    topics of the Python reference range from a few hundred characters to tens of thousands,
    and a split of one in ten documents left the validation split 0.4% of the text.

    Raises:
        DataError: too few documents to give every split one.
    """
    if len(documents) < 3:
        raise DataError(
            f"{len(documents)} document(s) cannot fill the train, val and test splits (whole "
            "documents go to each): give at least 3, better dozens (more .txt files or .jsonl "
            "lines)"
        )
    total = sum(len(doc.prompt) + len(doc.text) for doc in documents)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    held = {"test": 0, "val": 0}
    for doc in sorted(documents, key=_hash_order):
        split = next((s for s in ("test", "val") if held[s] < HELD_OUT_SHARE * total), "train")
        out[split].append(doc)
        if split in held:
            held[split] += len(doc.prompt) + len(doc.text)
    empty = [s for s, docs in out.items() if not docs]
    if empty:
        raise DataError(
            f"{len(documents)} document(s) leave the {' and '.join(empty)} split(s) empty "
            "(whole documents go to test and to validation until each holds a tenth of the "
            "text): give more documents (more .txt files or .jsonl lines)"
        )
    order = {id(doc): i for i, doc in enumerate(documents)}
    for docs in out.values():  # each split in the order the documents came
        docs.sort(key=lambda d: order[id(d)])
    return out


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """The documents of ``.txt`` and ``.jsonl`` files (a directory: its ``.txt`` and
    ``.jsonl`` files, sorted). Problems name the file and line."""
    documents: list[Document] = []
    for path in _files(paths):
        if path.suffix == ".jsonl":
            documents.extend(_jsonl_documents(path))
            continue
        text = _read(path)
        if not text.strip():
            raise DataError(f"{path} is empty: a text file is one document and needs some text")
        documents.append(Document(path.name, text))
    if not documents:
        raise DataError("no documents: give .txt or .jsonl files, or a directory holding them")
    return documents


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".txt", ".jsonl"))
            if not found:
                raise DataError(f"{p} holds no .txt or .jsonl files")
            out.extend(found)
        elif not p.is_file():
            raise DataError(f"{p} does not exist")
        elif p.suffix not in (".txt", ".jsonl"):
            raise DataError(
                f"{p}: text data must be .txt or .jsonl files (got {p.suffix or 'no suffix'})"
            )
        else:
            out.append(p)
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror})") from None


def _jsonl_documents(path: Path) -> list[Document]:
    documents = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object")
        if "text" in row:
            fields = {"text": row["text"]}
        elif "prompt" in row and "completion" in row:
            fields = {"prompt": row["prompt"], "text": row["completion"]}
        else:
            raise DataError(
                f"{where} has neither a 'text' field nor 'prompt' and 'completion' fields "
                f"(it has: {', '.join(sorted(row)) or 'none'})"
            )
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise DataError(f"{where}: the field(s) {', '.join(bad)} must be strings")
        if not fields["text"].strip():
            raise DataError(f"{where}: the text (or completion) is empty")
        documents.append(
            Document(f"{path.name}:{number}", fields["text"], fields.get("prompt", ""))
        )
    if not documents:
        raise DataError(f"{path} is empty: it holds no JSON lines")
    return documents


@dataclass(frozen=True)
class TokenStream:
    """A split's tokens as one stream: ``tokens`` (ids, end-of-text after each document) and
    ``loss`` (1 where the token is a label that takes a loss, 0 for prompt tokens)."""

    tokens: np.ndarray
    loss: np.ndarray
    documents: int

    def __len__(self) -> int:
        return len(self.tokens)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type holding every id."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenize(documents: Sequence[Document], tokenizer: Tokenizer) -> TokenStream:
    """The documents' tokens in one stream (in memory; :func:`cached_tokens` keeps them on
    disk)."""
    dtype = token_dtype(tokenizer.vocab_size)
    tokens: list[np.ndarray] = []
    loss: list[np.ndarray] = []
    for doc in documents:
        prompt = tokenizer.encode(doc.prompt) if doc.prompt else []
        text = [*tokenizer.encode(doc.text), tokenizer.eos_id]
        tokens.append(np.asarray(prompt + text, dtype=dtype))
        loss.append(np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(text), np.uint8)]))
    if not tokens:
        raise DataError("no documents to tokenize")
    return TokenStream(np.concatenate(tokens), np.concatenate(loss), len(documents))


def documents_digest(documents: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for doc in documents:
        for part in (doc.name, doc.prompt, doc.text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def cached_tokens(
    documents: Sequence[Document], tokenizer: Tokenizer, directory: str | Path
) -> TokenStream:
    """The documents' tokens, from ``directory`` when they were tokenized before by the same
    tokenizer (checked against the checksums written with them), else tokenized and written
    there (each file atomically). The arrays are memory-mapped."""
    directory = Path(directory)
    key = sha256_bytes(
        canonical_json(
            {"format": TOKENS_FORMAT, "tokenizer": tokenizer.identity,
             "documents": documents_digest(documents)}
        ).encode()
    )  # fmt: skip
    stem = directory / f"tokens-{key[:16]}"
    index = stem.with_suffix(".json")
    found = _read_tokens(stem, index, key)
    if found is not None:
        return found
    stream = tokenize(documents, tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, array in (("tokens", stream.tokens), ("loss", stream.loss)):
        with atomic_path(f"{stem}.{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)  # a file object: np.save adds no suffix
        sums[name] = sha256_bytes(array.tobytes())
    atomic_write_text(
        index,
        canonical_json({"key": key, "documents": stream.documents, "count": len(stream),
                        "dtype": str(stream.tokens.dtype), "sha256": sums}) + "\n",
    )  # fmt: skip
    return _read_tokens(stem, index, key) or stream


def _read_tokens(stem: Path, index: Path, key: str) -> TokenStream | None:
    """The cached stream, or ``None`` when there is none, or it is not the one asked for, or
    its arrays do not match their checksums (then it is tokenized again)."""
    if not index.is_file():
        return None
    try:
        info = read_json(index, "tokenized text index")
        arrays = {
            name: np.load(f"{stem}.{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in ("tokens", "loss")
        }
    except (OSError, ValueError, EOFError):  # missing, torn or not an array
        return None
    if not isinstance(info, dict) or info.get("key") != key:
        return None
    for name, array in arrays.items():
        if len(array) != info.get("count") or sha256_bytes(array.tobytes()) != info.get(
            "sha256", {}
        ).get(name):
            return None
    return TokenStream(arrays["tokens"], arrays["loss"], int(info["documents"]))


@dataclass(frozen=True)
class PackedBlocks:
    """Fixed-length training examples over a :class:`TokenStream`: block ``i`` is the
    ``block`` tokens from ``i * block`` (inputs) and the next ``block`` tokens one position
    later (labels, ``-100`` where no loss is taken). The stream's last tokens that do not fill
    a block are left out."""

    stream: TokenStream
    block: int

    def __post_init__(self) -> None:
        if self.block < 1:
            raise DataError(
                f"the block length must be a positive number of tokens, got {self.block}"
            )
        if len(self) == 0:
            raise DataError(
                f"{len(self.stream):,} tokens do not fill one block of {self.block} (plus the label "
                "of its last token): use a shorter block or more text"
            )

    def __len__(self) -> int:
        return (len(self.stream) - 1) // self.block

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, labels)``, each ``(len(indices), block)`` int64."""
        starts = np.asarray(indices, dtype=np.int64) * self.block
        offsets = starts[:, None] + np.arange(self.block)[None, :]
        tokens, loss = self.stream.tokens, self.stream.loss
        inputs = np.asarray(tokens[offsets], dtype=np.int64)
        labels = np.asarray(tokens[offsets + 1], dtype=np.int64)
        labels[np.asarray(loss[offsets + 1]) == 0] = IGNORE_INDEX
        return inputs, labels

    def label_bytes(self, bytes_per_token: np.ndarray) -> int:
        """UTF-8 bytes of the labels that take a loss (``bytes_per_token``:
        :func:`token_bytes`): what bits per byte divide by."""
        end = len(self) * self.block + 1
        labels = np.asarray(self.stream.tokens[1:end]).astype(np.int64)
        kept = np.asarray(self.stream.loss[1:end]) == 1
        return int(bytes_per_token[labels[kept]].sum())

    def tokens_with_loss(self) -> int:
        """Labels that take a loss in all blocks (the tokens a perplexity averages over)."""
        end = len(self) * self.block + 1
        return int(np.asarray(self.stream.loss[1:end]).sum())


def token_bytes(tokenizer: Tokenizer) -> np.ndarray:
    """``(vocab,)`` the UTF-8 bytes each token stands for (0 for special tokens): what bits per
    byte divide by, so that models with different tokenizers compare."""
    special = {tokenizer.eos_id}
    return np.array(
        [0 if i in special else len(tokenizer.decode([i]).encode("utf-8"))
         for i in range(tokenizer.vocab_size)],
        dtype=np.int64,
    )  # fmt: skip


@dataclass(frozen=True)
class TextData:
    """A language-model run's data: the tokenizer and the three splits as packed blocks.

    Shaped like the image :class:`~kdistill.data.DataBundle` where a run reads it: ``name``,
    ``num_classes`` (the vocabulary), ``input_shape`` (``(block,)``), the splits' lengths
    (blocks), ``pipeline``."""

    name: str
    source: str
    tokenizer: Tokenizer
    block: int
    train: PackedBlocks
    val: PackedBlocks
    test: PackedBlocks
    pipeline: str = "memory"
    pipeline_reason: str = "token arrays, memory-mapped"
    # the training split's documents when a run made them (prompts and completions for
    # sequence-level or on-policy distillation); None for the text's own
    train_documents: tuple[Document, ...] | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block,)

    def describe_pipeline(self) -> str:
        splits = ", ".join(
            f"{name} {len(blocks):,} blocks ({blocks.tokens_with_loss():,} tokens)"
            for name, blocks in (("train", self.train), ("val", self.val), ("test", self.test))
        )
        return (
            f"text: {self.source}, tokenizer {self.tokenizer.identity} ({self.num_classes:,} "
            f"tokens), blocks of {self.block}: {splits}"
        )


def paragraph_prompts(documents: Sequence[Document], min_chars: int = 40) -> list[Document]:
    """Prompts for generation: every paragraph (text between blank lines) of at least
    ``min_chars`` characters, its first sentence as the prompt and the rest as the reference
    completion. A sentence ends at ``.``, ``?`` or ``!`` before whitespace (line breaks inside a
    paragraph only wrap it); a paragraph of one sentence, or of none (a heading, a grammar
    rule), gives no prompt."""
    out = []
    for doc in documents:
        for i, paragraph in enumerate(re.split(r"\n\s*\n", doc.text)):
            paragraph = paragraph.strip()
            if len(paragraph) < min_chars:
                continue
            end = re.search(r"[.?!](?=\s)", paragraph)
            if end is None or end.end() >= len(paragraph.rstrip()):
                continue
            cut = end.end()
            out.append(Document(f"{doc.name}#{i}", paragraph[cut:], paragraph[:cut]))
    return out


def text_documents(name: str, files: Sequence[str]) -> list[Document]:
    """The documents of ``name``: ``pydocs``, or ``text`` from ``files``."""
    return pydoc_documents() if name == "pydocs" else read_documents(files)


def build_text_data(
    name: str,
    files: Sequence[str],
    tokenizer: Tokenizer,
    block: int,
    cache_dir: str | Path,
    *,
    train_documents: Callable[[list[Document]], list[Document]] | None = None,
) -> TextData:
    """The documents of ``name`` (``pydocs``, or ``text`` from ``files``), split, tokenized
    (cached in ``cache_dir``) and packed into blocks of ``block`` tokens.
    ``train_documents`` replaces the training split's documents by what it returns for them
    (sequence-level distillation: the teacher's completions of their prompts)."""
    documents = text_documents(name, files)
    source = (
        "pydoc_data.topics (the Python language reference)"
        if name == "pydocs"
        else ", ".join(files)
    )
    splits = split_documents(documents)
    made = None
    if train_documents is not None:
        splits["train"] = train_documents(splits["train"])
        made = tuple(splits["train"])
    blocks = {}
    for split, docs in splits.items():
        stream = cached_tokens(docs, tokenizer, cache_dir)
        try:
            blocks[split] = PackedBlocks(stream, block)
        except DataError as e:
            raise DataError(f"the {split} split of {source}: {e}") from None
    return TextData(
        name, source, tokenizer, block, blocks["train"], blocks["val"], blocks["test"],
        train_documents=made,
    )  # fmt: skip


class TokenLoader:
    """Batches of blocks (token ids and labels) for one process: shuffled per epoch from the
    seed when training (the same order on every process, each taking its share), in order when
    evaluating. ``batch_size`` is global: each of ``world_size`` processes takes its part."""

    def __init__(
        self,
        blocks: PackedBlocks,
        batch_size: int,
        *,
        device: Any,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise DataError(
                f"data.batch_size={batch_size} must be a multiple of the {world_size} processes"
            )
        self.blocks, self.batch = blocks, batch_size // world_size
        self.device, self.shuffle, self.seed = device, shuffle, seed
        self.drop_last, self.rank, self.world = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _mine(self) -> np.ndarray:
        n = len(self.blocks)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n)
        if self.world > 1 and self.shuffle:  # equal shares: every process takes as many steps
            order = order[: n - n % self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        if self.world > 1 and not self.shuffle:
            # evaluating: as many batches in every process (the last ones may hold no block of
            # this process's share), since a sharded model's forwards are collectives
            share = -(-len(self.blocks) // self.world)
            return -(-share // self.batch)
        mine = len(self._mine())
        return mine // self.batch if self.drop_last else -(-mine // self.batch)

    def __iter__(self) -> Iterator[Batch]:
        mine = self._mine()
        for b in range(len(self)):
            rows = mine[b * self.batch : (b + 1) * self.batch]
            if not len(rows):  # a padding batch: one block, no label taking a loss
                inputs, labels = self.blocks.batch(np.zeros(1, dtype=np.int64))
                labels[:] = IGNORE_INDEX
                yield Batch(
                    inputs=torch.from_numpy(inputs).to(self.device),
                    targets=torch.from_numpy(labels).to(self.device),
                    sample_ids=torch.zeros(1, dtype=torch.int64),
                    views=None,
                )
                continue
            inputs, labels = self.blocks.batch(rows)
            yield Batch(
                inputs=torch.from_numpy(inputs).to(self.device),
                targets=torch.from_numpy(labels).to(self.device),
                sample_ids=torch.from_numpy(rows.astype(np.int64)),
                views=None,
            )
