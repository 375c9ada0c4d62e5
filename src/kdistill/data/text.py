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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdistill.data.errors import DataError
from kdistill.data.tokenizers import Tokenizer
from kdistill.files import atomic_path, atomic_write_text, canonical_json, read_json, sha256_bytes
from kdistill.types import IGNORE_INDEX

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


def split_of(name: str) -> str:
    """The split of a document, by a fixed rule on its name: about one in ten to test, one in
    ten to validation, the rest to training."""
    bucket = hashlib.sha256(name.encode("utf-8")).digest()[0] % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def split_documents(documents: Sequence[Document]) -> dict[str, list[Document]]:
    """``{"train": [...], "val": [...], "test": [...]}`` by :func:`split_of`; every split must
    hold a document (else a :class:`DataError` saying how many there are)."""
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc in documents:
        out[split_of(doc.name)].append(doc)
    empty = [s for s, docs in out.items() if not docs]
    if empty:
        raise DataError(
            f"{len(documents)} document(s) leave the {' and '.join(empty)} split(s) empty "
            "(documents are assigned to splits by their names, about 1 in 10 each to val and "
            "test): give more documents (more .txt files or .jsonl lines)"
        )
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

    def tokens_with_loss(self) -> int:
        """Labels that take a loss in all blocks (the tokens a perplexity averages over)."""
        end = len(self) * self.block + 1
        return int(np.asarray(self.stream.loss[1:end]).sum())
