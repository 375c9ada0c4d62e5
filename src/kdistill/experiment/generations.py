"""The teacher's completions of prompts, for sequence-level distillation (Kim and Rush 2016):
generated once into ``<out_dir>/generations/<fingerprint>/`` and reused by every run that asks
for the same teacher, tokenizer, prompts and settings.

The prompts are cut into chunks of ``CHUNK_BATCHES`` batches; each chunk is written to its own
file (atomically, with its sha256 in the manifest written at the end), so a generation that is
killed resumes at the first missing chunk, and each chunk samples from its own seed
(``seed * 1_000_003 + chunk``): a resumed generation gives what an uninterrupted one does. One
process builds a directory at a time (its lock); the others wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.cache.fingerprint import fingerprint
from kdistill.config.schema import SequenceLevelConfig
from kdistill.data.errors import DataError
from kdistill.data.text import Document
from kdistill.data.tokenizers import Tokenizer
from kdistill.files import atomic_write_text, read_json, sha256_bytes
from kdistill.locks import exclusive_lock
from kdistill.models.generation import complete

Log = Callable[[str], None]
GENERATIONS_DIR = "generations"
CHUNK_BATCHES = 8  # batches of prompts per chunk file
MANIFEST = "manifest.json"


def teacher_completions(
    prompts: Sequence[Document],
    model: nn.Module,
    tokenizer: Tokenizer,
    settings: SequenceLevelConfig,
    *,
    out_dir: str | Path,
    teacher_sha256: str,
    log: Log,
) -> list[Document]:
    """``prompts`` with the teacher's completions as their text (found, or generated)."""
    description = {
        "kind": "generations",
        "teacher": teacher_sha256,
        "tokenizer": tokenizer.identity,
        "prompts": sha256_bytes(
            json.dumps([[d.name, d.prompt] for d in prompts], ensure_ascii=False).encode()
        ),
        "settings": asdict(settings),
        "chunk": CHUNK_BATCHES,
    }
    directory = Path(out_dir) / GENERATIONS_DIR / fingerprint(description)[:16]
    with exclusive_lock(directory, f"generations {directory}", wait=True, log=log):
        found = _read_manifest(directory, description)
        if found is not None:
            log(f"teacher's completions: reading {directory} ({len(found):,} prompts)")
            return found
        return _generate(prompts, model, tokenizer, settings, directory, description, log)


def _generate(
    prompts: Sequence[Document],
    model: nn.Module,
    tokenizer: Tokenizer,
    settings: SequenceLevelConfig,
    directory: Path,
    description: dict[str, Any],
    log: Log,
) -> list[Document]:
    directory.mkdir(parents=True, exist_ok=True)
    per_chunk = CHUNK_BATCHES * settings.batch_size
    chunks = [prompts[i : i + per_chunk] for i in range(0, len(prompts), per_chunk)]
    parts, out = [], []
    how = "greedy" if settings.temperature == 0 else (
        f"sampled at T={settings.temperature:g}, top-p {settings.top_p:g}")  # fmt: skip
    log(
        f"teacher's completions: {len(prompts):,} prompts, {settings.max_new_tokens} new tokens "
        f"each, {how}, into {directory} ({len(chunks)} chunks)"
    )
    for index, chunk in enumerate(chunks):
        path = directory / f"part-{index:05d}.jsonl"
        if path.is_file():  # written whole before an interruption (atomically)
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        else:
            generator_seed = settings.seed * 1_000_003 + index
            texts = complete(
                model,
                tokenizer,
                [d.prompt for d in chunk],
                settings,
                generator_seed,
                batch_size=settings.batch_size,
            )
            rows = [{"name": d.name, "prompt": d.prompt, "completion": t}
                    for d, t in zip(chunk, texts, strict=True)]  # fmt: skip
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            log(f"teacher's completions: chunk {index + 1}/{len(chunks)}")
        parts.append({"file": path.name, "sha256": sha256_bytes(path.read_bytes())})
        out += [Document(r["name"], r["completion"], r["prompt"]) for r in rows]
    manifest = {"description": description, "parts": parts, "count": len(out)}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2))
    return out


def _read_manifest(directory: Path, description: dict[str, Any]) -> list[Document] | None:
    """The documents of a finished generation, each part checked against the manifest's sha256;
    ``None`` when it is not finished. A part that does not match is named."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path, "a generations manifest")
    if manifest.get("description") != json.loads(json.dumps(description)):
        raise DataError(f"{path} describes other generations than its directory's name says")
    out = []
    for part in manifest["parts"]:
        name = str(part["file"])
        if Path(name).name != name or not name.startswith("part-"):  # only its own part files
            raise DataError(f"{path} names a part {name!r} outside its directory")
        data = (directory / name).read_bytes()
        if sha256_bytes(data) != part["sha256"]:
            raise DataError(
                f"{directory / part['file']} does not match its manifest's sha256: delete "
                f"{directory} to generate again"
            )
        for line in data.decode("utf-8").splitlines():
            row = json.loads(line)
            out.append(Document(str(row["name"]), str(row["completion"]), str(row["prompt"])))
    if len(out) != manifest["count"]:
        raise DataError(f"{path}: {len(out)} completions, the manifest says {manifest['count']}")
    return out
