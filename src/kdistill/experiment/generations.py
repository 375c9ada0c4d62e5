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

import torch
from torch import Tensor, nn

from kdistill.cache.fingerprint import fingerprint
from kdistill.config.schema import SequenceLevelConfig
from kdistill.data.errors import DataError
from kdistill.data.text import Document
from kdistill.data.tokenizers import Tokenizer
from kdistill.files import atomic_write_text, read_json, sha256_bytes
from kdistill.locks import exclusive_lock

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
            texts = complete(model, tokenizer, [d.prompt for d in chunk], settings, generator_seed)
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
        data = (directory / part["file"]).read_bytes()
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


@torch.no_grad()
def complete(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    settings: SequenceLevelConfig,
    seed: int,
) -> list[str]:
    """The model's completions of ``prompts`` (text after each prompt, up to
    ``settings.max_new_tokens`` tokens or the end-of-text token), in batches of
    ``settings.batch_size``; sampling draws from ``seed``. A Hugging Face model generates with
    its key/value cache (``generate``, prompts padded on the left); any other language model
    one prompt at a time over its whole context."""
    was_training = model.training
    model.eval()
    try:
        hf = getattr(model, "model", None)
        if callable(getattr(hf, "generate", None)):
            return _hf_complete(hf, tokenizer, prompts, settings, seed)
        generator = torch.Generator().manual_seed(seed)
        return [
            tokenizer.decode(_sample(model, tokenizer.encode(p), settings, generator, tokenizer))
            for p in prompts
        ]
    finally:
        model.train(was_training)


def _next_token(logits: Tensor, settings: SequenceLevelConfig, generator: torch.Generator) -> int:
    """Greedy at temperature 0; else a draw from the top-p nucleus at the temperature."""
    if settings.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / settings.temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(0) - sorted_probs < settings.top_p  # the nucleus, at least one
    kept = sorted_probs * keep
    choice = torch.multinomial(kept / kept.sum(), 1, generator=generator)
    return int(order[choice])


def _sample(
    model: nn.Module,
    prompt: list[int],
    settings: SequenceLevelConfig,
    generator: torch.Generator,
    tokenizer: Tokenizer,
) -> list[int]:
    device = next(model.parameters()).device
    context = getattr(model, "context", None) or 1024
    ids, new = list(prompt), []
    for _ in range(settings.max_new_tokens):
        window = torch.tensor(ids[-context:], device=device)[None]
        token = _next_token(model(window)[0, -1].float().cpu(), settings, generator)
        if token == tokenizer.eos_id:
            break
        ids.append(token)
        new.append(token)
    return new


def _hf_complete(
    hf: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    settings: SequenceLevelConfig,
    seed: int,
) -> list[str]:
    device = next(hf.parameters()).device
    eos = tokenizer.eos_id
    out: list[str] = []
    torch.manual_seed(seed)  # generate() samples from the global generator
    for start in range(0, len(prompts), settings.batch_size):
        batch = [tokenizer.encode(p) for p in prompts[start : start + settings.batch_size]]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):  # padded on the left: every prompt ends together
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        sampled = settings.temperature > 0
        generated = hf.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampled,
            **({"temperature": settings.temperature, "top_p": settings.top_p} if sampled else {}),
            pad_token_id=eos,
            eos_token_id=eos,
        )
        for row in generated[:, width:].tolist():
            new = row[: row.index(eos)] if eos in row else row
            out.append(tokenizer.decode(new))
    return out
