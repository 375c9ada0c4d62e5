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
