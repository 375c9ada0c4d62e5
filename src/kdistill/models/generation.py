"""Completions from a causal language model: greedy, or sampled at a temperature from the
top-p nucleus, reproducible from a seed. A Hugging Face model generates with its key/value cache
(``generate``, prompts padded on the left); any other language model (kdistill's GPTs) one
prompt at a time over its whole context. The tokenizer is anything with ``encode``, ``decode``
and ``eos_id``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class Sampling(Protocol):
    """What a generation is asked for (``SequenceLevelConfig``, ``OnPolicyConfig``)."""

    max_new_tokens: int
    temperature: float
    top_p: float


@torch.no_grad()
def complete(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: Sampling,
    seed: int,
    batch_size: int = 8,
) -> list[str]:
    """The model's completions of ``prompts`` as text (after each prompt, up to
    ``settings.max_new_tokens`` tokens or the end-of-text token)."""
    ids = complete_ids(model, [tokenizer.encode(p) for p in prompts], settings, seed,
                       eos_id=tokenizer.eos_id, batch_size=batch_size)  # fmt: skip
    return [tokenizer.decode(new) for new in ids]


@torch.no_grad()
def complete_ids(
    model: nn.Module,
    prompts: Sequence[list[int]],
    settings: Sampling,
    seed: int,
    *,
    eos_id: int,
    batch_size: int = 8,
) -> list[list[int]]:
    """The new token ids after each prompt (the end-of-text token not included), in batches
    of ``batch_size``; sampling draws from ``seed``; the model's train/eval mode is kept."""
    while isinstance(getattr(model, "module", None), nn.Module):  # a data-parallel wrapper
        model = model.module
    was_training = model.training
    model.eval()
    try:
        hf = getattr(model, "model", None)
        if callable(getattr(hf, "generate", None)):
            return _hf_complete(hf, prompts, settings, seed, eos_id, batch_size)
        generator = torch.Generator().manual_seed(seed)
        return [_sample(model, list(p), settings, generator, eos_id) for p in prompts]
    finally:
        model.train(was_training)


def next_token(logits: Tensor, settings: Sampling, generator: torch.Generator) -> int:
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
    settings: Sampling,
    generator: torch.Generator,
    eos_id: int,
) -> list[int]:
    device = next(model.parameters()).device
    context = getattr(model, "context", None) or 1024
    ids, new = list(prompt), []
    for _ in range(settings.max_new_tokens):
        window = torch.tensor(ids[-context:], device=device)[None]
        token = next_token(model(window)[0, -1].float().cpu(), settings, generator)
        if token == eos_id:
            break
        ids.append(token)
        new.append(token)
    return new


def _hf_complete(
    hf: nn.Module,
    prompts: Sequence[list[int]],
    settings: Sampling,
    seed: int,
    eos: int,
    batch_size: int,
) -> list[list[int]]:
    device = next(hf.parameters()).device
    out: list[list[int]] = []
    torch.manual_seed(seed)  # generate() samples from the global generator
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
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
            out.append(row[: row.index(eos)] if eos in row else row)
    return out
