"""A teacher's judgement of a student's own text: the student's greedy continuations of
held-out prompts, scored by the teacher's negative log-likelihood per continuation token (GKD's
measure of what on-policy distillation improves: a student taught only on fixed text may score
well on that text and still drift when it writes). ``kdistill eval RUN --judge TEACHER``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from kdistill.data.text import Document, paragraph_prompts
from kdistill.models.generation import complete_ids


@dataclass(frozen=True)
class Judgement:
    """The judge's mean negative log-likelihood (nats) per continuation token, its
    exponential, what it averages over, and how repetitive the continuations are
    (:func:`distinct_bigrams`: a judge rewards a loop of one likely word, so a low
    ``nll_per_token`` with few distinct bigrams is degenerate text, not good text)."""

    nll_per_token: float
    prompts: int
    tokens: int
    distinct_bigrams: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nll_per_token, 700.0))

    def as_dict(self) -> dict[str, Any]:
        return {"judge_nll_per_token": self.nll_per_token, "judge_perplexity": self.perplexity,
                "judged_prompts": self.prompts, "judged_tokens": self.tokens,
                "judged_distinct_bigrams": self.distinct_bigrams}  # fmt: skip


def distinct_bigrams(continuations: Sequence[Sequence[int]]) -> float | None:
    """The share of each continuation's token bigrams that it has not already written,
    pooled over the continuations (distinct bigrams within each, summed, over all bigrams):
    1.0 when no continuation repeats a bigram, near 0 for " the the the ...". Continuations of
    fewer than two tokens have no bigram; None when none has one."""
    seen = total = 0
    for tokens in continuations:
        pairs = list(itertools.pairwise(tokens))
        seen += len(set(pairs))
        total += len(pairs)
    return seen / total if total else None


def held_out_prompts(documents: Sequence[Document], count: int) -> list[str]:
    """The first sentences of the first ``count`` paragraphs of ``documents`` that have two
    sentences (:func:`~kdistill.data.text.paragraph_prompts`)."""
    return [d.prompt for d in paragraph_prompts(documents)[:count]]


@torch.no_grad()
def judge_continuations(
    student: nn.Module,
    judge: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
) -> Judgement:
    """``judge``'s negative log-likelihood of ``student``'s greedy continuations of
    ``prompts`` (both read ``tokenizer``'s ids); a continuation that ends at once counts no
    token."""
    if not prompts:
        raise ValueError("no prompt to continue: the split has no paragraph of two sentences")
    greedy = SimpleNamespace(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)
    encoded = [tokenizer.encode(p) for p in prompts]
    new = complete_ids(student, encoded, greedy, 0, eos_id=tokenizer.eos_id)
    was = judge.training
    judge.eval()
    device = next(iter(judge.parameters())).device
    nats, tokens = 0.0, 0
    try:
        for prompt, continuation in zip(encoded, new, strict=True):
            if not continuation:
                continue
            ids = torch.tensor([prompt + continuation], device=device)
            logits = judge(ids)
            logits = logits.logits if hasattr(logits, "logits") else logits
            start = len(prompt) - 1  # the position that predicts the continuation's first token
            scores = torch.log_softmax(logits[0, start:-1].float(), dim=-1)
            target = ids[0, start + 1 :]
            nats -= float(scores.gather(-1, target[:, None]).sum())
            tokens += len(continuation)
    finally:
        judge.train(was)
    return Judgement(nats / max(1, tokens), len(prompts), tokens, distinct_bigrams(new))
