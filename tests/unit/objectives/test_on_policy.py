"""On-policy batches: each row a prompt and the student's own completion, labels on the
completion's tokens only (its end-of-text token too when it ended itself), no cross-entropy,
the same batch for the same seed, epoch and samples."""

import torch

from kdistill.config.schema import OnPolicyConfig
from kdistill.models.gpt import build_language_model
from kdistill.objectives.on_policy import OnPolicyDistiller
from kdistill.types import IGNORE_INDEX


def distiller(lmbda=1.0, **kwargs):
    torch.manual_seed(0)
    student = build_language_model("gpt_nano", 20, 16, {})
    teacher = build_language_model("gpt_nano", 20, 16, {})
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    sampling = OnPolicyConfig(lmbda=lmbda, max_new_tokens=5, **kwargs)
    return OnPolicyDistiller(student, teacher, prompts=prompts, sampling=sampling, lmbda=lmbda,
                             eos_id=0, seed=3, alpha=0.5, beta=0.5)  # fmt: skip


def test_own_samples_hold_prompt_and_completion_with_labels_on_the_completion():
    objective = distiller()
    g = torch.Generator().manual_seed(0)
    inputs, targets = objective._own_samples(4, 12, torch.device("cpu"), g)
    assert inputs.shape == targets.shape == (4, 12)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    for row in range(4):
        ids, labels = inputs[row].tolist(), targets[row].tolist()
        prompt = next(p for p in prompts if ids[: len(p)] == p)
        kept = [i for i, y in enumerate(labels) if y != IGNORE_INDEX]
        # the first label is at the prompt's last position: the completion's first token
        assert kept and kept[0] == len(prompt) - 1 and kept == list(range(kept[0], kept[-1] + 1))
        completion = [labels[i] for i in kept]
        assert len(completion) <= 5 + 1
        # inputs are the sequence shifted: each label is the next input
        assert all(ids[i + 1] == labels[i] for i in kept[:-1])
    assert objective.on_policy_batches == 1 and objective.generated_tokens > 0


def test_a_batch_is_the_same_for_the_same_seed_epoch_and_samples():
    a, b = distiller(lmbda=0.5, temperature=1.0), distiller(lmbda=0.5, temperature=1.0)
    inputs = torch.randint(1, 20, (4, 12))
    targets = torch.randint(1, 20, (4, 12))
    for epoch in range(3):
        for first in range(6):
            a.epoch = b.epoch = epoch
            ids = torch.arange(first, first + 4)
            x = a(inputs, targets, sample_ids=ids).loss.total
            y = b(inputs, targets, sample_ids=ids).loss.total
            assert torch.equal(x, y)
    assert a.on_policy_batches == b.on_policy_batches and 0 < a.on_policy_batches < 18


def test_evaluation_and_lmbda_zero_are_the_distillers_own():
    objective = distiller(lmbda=1.0)
    inputs, targets = torch.randint(1, 20, (2, 8)), torch.randint(1, 20, (2, 8))
    objective.eval()
    objective(inputs, targets, sample_ids=torch.arange(2))
    assert objective.on_policy_batches == 0
    off = distiller(lmbda=0.0)
    off(inputs, targets, sample_ids=torch.arange(2))
    assert off.on_policy_batches == 0
