"""A small byte-level BPE tokenizer trained on a run's own training text (``data.tokenizer:
bpe:<vocab>``), for a student that does not pay for its teacher's large vocabulary
(cross-tokenizer distillation).

Trained with Hugging Face ``tokenizers`` (byte-level, so every text is spelled byte for byte
and no character is unknown; one special token, the end of text) on the training split only,
and saved as a Hugging Face tokenizer directory under ``<out_dir>/tokenizers/<fingerprint>/``:
the fingerprint covers the training documents, the vocabulary size and the ``tokenizers``
version, so every run and sweep that asks for the same tokenizer reads the same files, and a
model file names that directory (``kdistill eval`` reads it back, checked by its identity).
The directory appears whole or not at all, and its manifest is checked before it is reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdistill.data.errors import DataError
from kdistill.data.text import Document, documents_digest
from kdistill.data.tokenizers import HFTokenizer
from kdistill.extras import require
from kdistill.files import atomic_dir, canonical_json, read_json, sha256_bytes
from kdistill.locks import exclusive_lock

EOS = "<|endoftext|>"
MANIFEST = "kdistill-bpe.json"


def bpe_description(documents: Sequence[Document], vocab_size: int) -> dict[str, object]:
    """What determines the trained tokenizer (its fingerprint's input)."""
    tokenizers = require("tokenizers", "lm")
    return {
        "kind": "byte-level BPE",
        "vocab_size": vocab_size,
        "documents": documents_digest(documents),
        "tokenizers": tokenizers.__version__,
        "end_of_text": EOS,
    }


def trained_bpe(
    documents: Sequence[Document], vocab_size: int, root: str | Path, log=None
) -> HFTokenizer:
    """The byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``documents``, read
    from ``root/<fingerprint>`` when it was trained before, else trained and saved there."""
    description = bpe_description(documents, vocab_size)
    fingerprint = sha256_bytes(canonical_json(description).encode())[:16]
    directory = Path(root) / f"bpe-{vocab_size}-{fingerprint}"
    with exclusive_lock(directory, f"tokenizer {directory}", wait=True, log=log):
        if directory.exists():
            recorded = read_json(directory / MANIFEST, f"the tokenizer manifest in {directory}")
            if recorded != description:
                raise DataError(
                    f"{directory} does not hold the tokenizer its name promises (its manifest "
                    f"says {recorded}, expected {description}): remove the directory to train "
                    "it again"
                )
            return HFTokenizer(directory)
        with atomic_dir(directory) as tmp:
            _train(documents, vocab_size).save_pretrained(str(tmp))
            (tmp / MANIFEST).write_text(json.dumps(description, indent=1) + "\n")
    tokenizer = HFTokenizer(directory)
    if log is not None:
        log(
            f"tokenizer: byte-level BPE of {tokenizer.vocab_size:,} tokens trained on "
            f"{len(documents):,} training documents, saved in {directory}"
        )
    return tokenizer


def _train(documents: Sequence[Document], vocab_size: int):
    """A transformers fast tokenizer (so that ``AutoTokenizer`` reads it back) around the
    trained byte-level BPE model."""
    tokenizers = require("tokenizers", "lm")
    transformers = require("transformers", "lm")
    if not documents:
        raise DataError("bpe: no training documents to learn a vocabulary from")
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = byte_level(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=byte_level.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator((d.prompt + d.text for d in documents), trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS)
