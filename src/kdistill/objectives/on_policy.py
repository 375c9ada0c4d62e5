"""On-policy distillation (GKD, Agarwal et al. 2024): the student also learns on its own
samples, scored by the teacher, because a student taught only on fixed text drifts when it
generates (exposure bias).

:class:`OnPolicyDistiller` is a :class:`TokenDistiller` whose training batches are, with
probability ``lmbda``, replaced by the student's own completions of prompts from the training
text: each row a prompt and the student's completion (sampled without gradients, in eval mode),
padded on the right to the batch's width; the divergence from the teacher counts over the
completion's tokens only, without the cross-entropy (the tokens are the student's, not labels).
Other batches, and evaluation, are the distiller's own. The coin and the prompts of a batch
come from the run's seed, the epoch and the batch's first sample, so a run repeats its steps
exactly, resumed or not; each process of a data-parallel run flips its own coin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.generation import Sampling, complete_ids
from kdistill.objectives.tokens import TokenDistiller
from kdistill.types import IGNORE_INDEX, DistillerOutput


class OnPolicyDistiller(TokenDistiller):
    """A token distiller that trains on the student's own completions with probability
    ``lmbda`` per batch.

    Args:
        student, teacher, **distiller: as :class:`TokenDistiller`.
        prompts: the prompts' token ids (the training text's).
        sampling: ``max_new_tokens``, ``temperature``, ``top_p`` of the student's samples.
        lmbda: the probability that a training batch is on-policy.
        eos_id: the end-of-text token (it ends a completion, and pads).
        seed: the run's seed.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        prompts: Sequence[list[int]],
        sampling: Sampling,
        lmbda: float,
        eos_id: int,
        seed: int = 0,
        **distiller: Any,
    ) -> None:
        super().__init__(student, teacher, **distiller)
        if not prompts:
            raise ValueError("on-policy distillation needs at least one prompt")
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
        self.prompts = [list(p) for p in prompts]
        self.sampling, self.lmbda = sampling, float(lmbda)
        self.eos_id, self.seed = int(eos_id), int(seed)
        # what the student generated (for tokens per second beside the training's)
        self.generated_tokens, self.generation_s, self.on_policy_batches = 0, 0.0, 0

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> DistillerOutput:
        if not self.training or self.lmbda == 0:
            return super().forward(inputs, targets, sample_ids=sample_ids, views=views)
        first = int(sample_ids.min()) if sample_ids is not None and sample_ids.numel() else 0
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + first)
        if float(torch.rand((), generator=g)) >= self.lmbda:
            return super().forward(inputs, targets, sample_ids=sample_ids, views=views)
        inputs, targets = self._own_samples(inputs.shape[0], inputs.shape[1], inputs.device, g)
        alpha, self.alpha = self.alpha, 0.0  # the student's own tokens are not labels
        try:
            return super().forward(inputs, targets)
        finally:
            self.alpha = alpha

    def _own_samples(
        self, rows: int, width: int, device: torch.device, g: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``rows`` prompts and the student's completions, as inputs and targets of ``width``
        positions (prompts cut to leave room for one new token at least)."""
        chosen = torch.randint(0, len(self.prompts), (rows,), generator=g).tolist()
        room = max(1, min(self.sampling.max_new_tokens, width - 1))
        prompts = [self.prompts[i][-(width - room) :] or [self.eos_id] for i in chosen]
        started = time.perf_counter()
        seed = int(torch.randint(0, 2**62, (), generator=g))
        new = complete_ids(self.student, prompts, self.sampling, seed, eos_id=self.eos_id,
                           batch_size=rows)  # fmt: skip
        self.generation_s += time.perf_counter() - started
        self.generated_tokens += sum(len(n[:room]) for n in new)
        self.on_policy_batches += 1
        inputs = torch.full((rows, width), self.eos_id, dtype=torch.long)
        targets = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        for r, (prompt, completion) in enumerate(zip(prompts, new, strict=True)):
            # a completion the student ended itself ends with its end-of-text token, which it
            # learns too
            ended = len(completion) < min(room, self.sampling.max_new_tokens)
            completion = completion[:room] + ([self.eos_id] if ended else [])
            sequence = (prompt + completion)[: width + 1]
            length = len(sequence) - 1
            inputs[r, :length] = torch.tensor(sequence[:-1])
            # a label wherever the next token is the student's: the completion only
            labels = torch.tensor(sequence[1:])
            labels[: len(prompt) - 1] = IGNORE_INDEX
            targets[r, :length] = labels
        return inputs.to(device), targets.to(device)

    def generation_stats(self) -> dict[str, float]:
        return {
            "on_policy_batches": self.on_policy_batches,
            "generated_tokens": self.generated_tokens,
            "generation_tokens_per_s": self.generated_tokens / max(1e-9, self.generation_s),
        }
