"""Tokenizers for language-model distillation: one small interface, two kinds.

Teacher and student must read the same tokens, so a run has one tokenizer, usually the
teacher's: :class:`HFTokenizer` reads a Hugging Face tokenizer from local files (a model
directory, or the tokenizer a GGUF file carries), never from the network and never running a
repository's code. :class:`ByteTokenizer` (UTF-8 bytes and an end-of-text token) needs nothing
installed; it is what a teacher trained by kdistill itself on text uses (``kdistill demo lm``).

``identity`` names what makes two tokenizers give the same ids (its kind and a digest of its
vocabulary and special tokens): it keys the tokenized-text cache and the teacher cache, and
teacher and student are compared by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from kdistill.data.errors import DataError
from kdistill.extras import require


class Tokenizer(Protocol):
    """What kdistill needs of a tokenizer."""

    @property
    def identity(self) -> str: ...

    @property
    def source(self) -> str:
        """How to make it again: ``bytes``, or the directory or GGUF file it was read from."""
        ...

    @property
    def vocab_size(self) -> int:
        """Ids are in ``[0, vocab_size)``."""
        ...

    @property
    def eos_id(self) -> int:
        """The end-of-text token put between documents."""
        ...

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes (ids 0-255) and an end-of-text token (256)."""

    identity = "bytes-utf8+eos"
    source = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer from local files: ``source`` is a model directory, or a
    ``.gguf`` file whose tokenizer transformers reads (with the ``gguf`` package)."""

    def __init__(self, source: str | Path) -> None:
        transformers = require("transformers", "lm")
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"tokenizer: {path} does not exist (a model directory or .gguf file)")
        kwargs: dict[str, object] = {"local_files_only": True, "trust_remote_code": False}
        directory = path
        if path.is_file():
            if path.suffix != ".gguf":
                raise DataError(
                    f"tokenizer: {path} is a file but not a .gguf file; give the model's directory"
                )
            require("gguf", "lm")
            directory, kwargs["gguf_file"] = path.parent, path.name
        try:
            self._tok = transformers.AutoTokenizer.from_pretrained(str(directory), **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"tokenizer: {path} cannot be read as a tokenizer ({e})") from None
        if self._tok.eos_token_id is None:
            raise DataError(f"tokenizer: {path} has no end-of-text token (eos_token)")
        self.source = str(path)
        vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
        special = {"eos": self._tok.eos_token, "bos": self._tok.bos_token}
        digest = hashlib.sha256(
            json.dumps([vocab, special], ensure_ascii=False, separators=(",", ":")).encode()
        ).hexdigest()
        self.identity = f"hf:{type(self._tok).__name__}:{digest[:16]}"
        self.vocab_size = len(self._tok)
        self.eos_id = int(self._tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids)))

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer's files into a model directory (a pruned model's, so that
        ``hf:<directory>`` brings its tokenizer; it reads back with the same identity)."""
        self._tok.save_pretrained(str(directory))


def tokenizer_from(source: str, identity: str | None = None) -> Tokenizer:
    """The tokenizer a model file records (its ``source``), checked against the ``identity``
    recorded with it when given."""
    tokenizer: Tokenizer = ByteTokenizer() if source == "bytes" else HFTokenizer(source)
    if identity is not None and tokenizer.identity != identity:
        raise DataError(
            f"the tokenizer at {source} is now {tokenizer.identity}, but the model was trained "
            f"with {identity}: it changed since"
        )
    return tokenizer


def same_tokenizer(teacher: Tokenizer, student: Tokenizer, what: str = "") -> None:
    """Refuse two tokenizers that give different ids (cross-tokenizer distillation is another
    method), naming both."""
    if teacher.identity != student.identity:
        raise DataError(
            f"{what or 'teacher and student'} use different tokenizers ({teacher.identity} and "
            f"{student.identity}): token-level distillation compares the two models' "
            "distributions token by token, which needs one tokenizer"
        )


def _byte_level_alphabet() -> dict[str, int]:
    """The printable character byte-level BPE (GPT-2's, and every ``tokenizers`` ``ByteLevel``
    model's) writes for each byte: printable Latin-1 bytes stand for themselves, the others are
    moved to 256 and up in byte order. Inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    moved = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + moved)
            moved += 1
    return {c: b for b, c in chars.items()}


def spelled_bytes(tokenizer: Tokenizer) -> list[bytes]:
    """The exact bytes each token id spells (``b""`` for special tokens), so that two
    tokenizations of one text can be lined up by byte offsets (cross-tokenizer distillation).

    Exact for UTF-8 bytes and for byte-level BPE tokenizers (GPT-2's family: SmolLM2, Llama 3,
    Qwen, the BPE kdistill trains): a token's text there may be part of a character, which
    ``decode`` would turn into a replacement character.

    Raises:
        DataError: a tokenizer of another kind (SentencePiece, word-level), whose tokens do not
            spell the text byte for byte.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return [bytes([i]) for i in range(256)] + [b""]
    backend = getattr(getattr(tokenizer, "_tok", None), "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None or type(decoder).__name__ != "ByteLevel":
        raise DataError(
            f"the tokenizer {tokenizer.identity} ({tokenizer.source}) is not a byte-level BPE "
            "tokenizer: cross-tokenizer distillation lines two tokenizations up by their bytes, "
            "which needs UTF-8 bytes or byte-level BPE (GPT-2's family) on both sides"
        )
    tok = tokenizer._tok  # type: ignore[attr-defined]
    alphabet = _byte_level_alphabet()
    special = set(tok.all_special_ids) | {tokenizer.eos_id}
    out: list[bytes] = []
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))):
        if i in special or piece is None:
            out.append(b"")
        elif all(c in alphabet for c in piece):
            out.append(bytes(alphabet[c] for c in piece))
        else:  # an added token written as plain text
            out.append(piece.encode("utf-8"))
    return out
