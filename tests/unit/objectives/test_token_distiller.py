"""TokenDistiller: the loss it reports, the teachers it reads, and exact token averaging in the
trainer under gradient accumulation."""

import copy
import dataclasses

import pytest
import torch

from kdistill.cache import build_cache
from kdistill.cache.store import CacheLayout
from kdistill.engine.trainer import Loop, Trainer
from kdistill.losses import sparse_token_divergence, teacher_topk, token_divergence
from kdistill.models.gpt import GPT
from kdistill.objectives import Objective, TokenDistiller
from kdistill.teachers.cached import CachedTeacher
from kdistill.types import IGNORE_INDEX, Batch

V, L = 40, 12


def models(seed=0):
    torch.manual_seed(seed)
    return GPT(V, L, dim=16, layers=1, heads=2), GPT(V, L, dim=32, layers=1, heads=2).eval()


def batch(rows, seed=1, masked=True, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, L), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    if masked:  # a prompt of a different length in every row: kept tokens differ per row
        for r in range(rows):
            labels[r, : (3 * r) % (L - 1)] = IGNORE_INDEX
    return ids, labels


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "tvd"])
def test_the_loss_is_alpha_ce_plus_beta_divergence(kind):
    student, teacher = models()
    objective = TokenDistiller(student, teacher, kind=kind, temperature=2.0, alpha=0.3, beta=0.7)
    assert isinstance(objective, Objective)
    ids, labels = batch(4)
    out = objective(ids, labels)
    logits = student(ids)
    with torch.no_grad():
        t_logits = teacher(ids)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1))
    d = token_divergence(logits, t_logits, labels, kind=kind, temperature=2.0)
    torch.testing.assert_close(out.loss.total, 0.3 * ce + 0.7 * d)
    assert int(out.loss.count) == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(out.loss.parts["distill"] * out.loss.weights["distill"], 0.7 * d)
    out.loss.total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert list(objective.parameters()) == list(student.parameters())


def test_a_cached_teachers_top_k_and_its_limits(tmp_path):
    student, teacher = models()
    ids, labels = batch(3)
    layout = CacheLayout(num_samples=3, views_per_sample=1, members=1, num_classes=V,
                         dtype="float32", topk=5, temperature=2.0, block=L)  # fmt: skip

    def compute(positions, _views):
        with torch.no_grad():
            return teacher_topk(teacher(ids[torch.from_numpy(positions)]), 5, temperature=2.0)

    import numpy as np

    cache = build_cache(tmp_path / "c", fingerprint="0" * 64, description={}, layout=layout,
                        sample_ids=np.arange(3), views=np.zeros((3, 1), np.int32),
                        compute=compute, batch_size=2, progress=False, log=lambda _: None)  # fmt: skip
    cached = TokenDistiller(student, CachedTeacher(cache, temperature=2.0), temperature=2.0,
                            alpha=0.0, beta=1.0)  # fmt: skip
    out = cached(ids, labels, sample_ids=torch.arange(3))
    top_ids, top_lp = teacher_topk(teacher(ids).detach(), 5, temperature=2.0)
    expected = sparse_token_divergence(student(ids), top_ids, top_lp, labels, temperature=2.0)
    torch.testing.assert_close(out.loss.total, expected)
    assert torch.equal(out.teacher.predictions(), top_ids[..., 0])
    reverse = TokenDistiller(student, CachedTeacher(cache, temperature=2.0), kind="reverse_kl",
                             temperature=2.0)  # fmt: skip
    with pytest.raises(ValueError, match="kind='reverse_kl' needs the teacher's full distribution"):
        reverse(ids, labels, sample_ids=torch.arange(3))


def test_vocabularies_of_one_tokenizer_padded_to_different_sizes():
    torch.manual_seed(0)
    student = GPT(V, L, dim=16, layers=1, heads=2)
    for teacher_vocab in (V + 8, V - 4):
        teacher = GPT(teacher_vocab, L, dim=16, layers=1, heads=2).eval()
        # the shared tokenizer's ids are in both vocabularies
        out = TokenDistiller(student, teacher, kind="reverse_kl")(*batch(2, vocab=V - 4))
        assert torch.isfinite(out.loss.total)


class Batches:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass


class PerBatchMean(TokenDistiller):
    """Each micro-batch's mean weighed alike (what averaging over samples does)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return out._replace(loss=dataclasses.replace(out.loss, count=None))


def one_step(micro_batches, accumulation, student, teacher, objective_class=None, chunk_size=None):
    ids, labels = batch(8)
    split = [
        Batch(i, lab, torch.arange(len(i)), None)
        for i, lab in zip(ids.chunk(micro_batches), labels.chunk(micro_batches), strict=True)
    ]
    objective = (objective_class or TokenDistiller)(
        copy.deepcopy(student), teacher, alpha=0.5, beta=0.5, chunk_size=chunk_size
    )
    trainer = Trainer(
        objective,
        lambda params: torch.optim.SGD(params, lr=0.5),
        Batches(split),
        {},
        Loop(epochs=1, device=torch.device("cpu"), num_classes=V, grad_accumulation=accumulation),
    )
    trainer.fit()
    assert trainer.state.step == 1
    return torch.cat([p.detach().flatten() for p in objective.student.parameters()])


def test_gradient_accumulation_follows_the_mean_over_all_kept_tokens():
    student, teacher = models()
    torch.set_default_dtype(torch.float64)  # differences of 1e-6 must be the method's, not fp32's
    try:
        student, teacher = student.double(), teacher.double()
        whole = one_step(1, 1, student, teacher)
        for parts in (2, 4):
            split = one_step(parts, parts, student, teacher)
            assert (split - whole).abs().max() < 1e-6
            # the same through the chunked head (chunks of 5 kept tokens)
            chunked = one_step(parts, parts, student, teacher, chunk_size=5)
            assert (chunked - whole).abs().max() < 1e-6
        moved = (whole - torch.cat([p.flatten() for p in student.parameters()])).abs().max()
        assert moved > 1e-3  # the step did something
        # without token weighting the step differs: the micro-batches hold different numbers
        # of kept tokens
        naive = one_step(4, 4, student, teacher, PerBatchMean)
        assert (naive - whole).abs().max() > 1e-4
    finally:
        torch.set_default_dtype(torch.float32)


def test_evaluation_of_a_language_model_counts_its_kept_tokens():
    from kdistill.engine.evaluation import evaluate

    student, _ = models()
    ids, labels = batch(4)
    result = evaluate(student, [Batch(ids, labels, torch.arange(4), None)], V)
    kept = labels != IGNORE_INDEX
    with torch.no_grad():
        logits = student(ids)
    nll = torch.nn.functional.cross_entropy(logits[kept], labels[kept])
    assert result.metrics["loss"] == pytest.approx(float(nll), rel=1e-5)
    top1 = (logits.argmax(-1) == labels)[kept].float().mean()
    assert result.metrics["top1"] == pytest.approx(float(top1))
    assert result.predictions.shape == (int(kept.sum()),)


class LogitsOnly(torch.nn.Module):
    """The same network without an output head to read: the objective computes its full
    logits (the plain path the chunked one must equal)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids)


def same_step(out_a, grad_a, out_b, grad_b):
    """The same loss and the same gradient of every parameter."""
    torch.testing.assert_close(out_a.loss.total, out_b.loss.total)
    for a, b in zip(grad_a, grad_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def grads(objective, ids, labels, **kwargs):
    objective.student.zero_grad()
    out = objective(ids, labels, **kwargs)
    out.loss.total.backward()
    return out, [p.grad.clone() for p in objective.student.parameters()]


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "tvd"])
def test_the_chunked_path_equals_the_full_logits(kind):
    student, teacher = models()
    ids, labels = batch(4)
    options = dict(kind=kind, temperature=2.0, alpha=0.3, beta=0.7)
    chunked = TokenDistiller(student, teacher, chunk_size=5, **options)
    plain = TokenDistiller(LogitsOnly(student), teacher, **options)
    out_c, grad_c = grads(chunked, ids, labels)
    out_p, grad_p = grads(plain, ids, labels)
    assert out_c.student.logits is None and out_p.student.logits is not None
    same_step(out_c, grad_c, out_p, grad_p)
    for part in ("student", "distill"):
        torch.testing.assert_close(out_c.loss.parts[part], out_p.loss.parts[part])
    # the predictions the trainer's metrics read: the argmax on the kept positions
    kept = labels != IGNORE_INDEX
    assert torch.equal(out_c.student.predicted()[kept], out_p.student.predicted()[kept])
    # the teacher went chunk by chunk too: its last hidden states, never its full logits; the
    # tokens it predicts (the agreement metric's) are kept while its chunks' logits exist
    assert out_c.teacher.last_hidden is not None and out_c.teacher.logits is None
    assert out_p.teacher.logits is not None
    teacher_tokens = out_p.teacher.predictions()[kept]
    assert torch.equal(out_c.teacher.predictions()[kept], teacher_tokens)
    assert torch.equal(out_c.teacher.detach()._hidden_argmax()[kept], teacher_tokens)


@pytest.mark.parametrize("teacher_vocab", [V + 8, V - 4])
def test_a_teacher_given_as_hidden_states_with_a_padded_vocabulary(teacher_vocab):
    torch.manual_seed(0)
    student = GPT(V, L, dim=16, layers=1, heads=2)
    teacher = GPT(teacher_vocab, L, dim=24, layers=1, heads=2).eval()
    ids, labels = batch(3, vocab=V - 4)  # the shared tokenizer's ids are in both vocabularies
    options = dict(kind="jsd", temperature=1.5, alpha=0.4, beta=0.6)
    out_c, grad_c = grads(TokenDistiller(student, teacher, chunk_size=4, **options), ids, labels)
    out_p, grad_p = grads(TokenDistiller(LogitsOnly(student), teacher, **options), ids, labels)
    assert out_c.teacher.last_hidden is not None
    same_step(out_c, grad_c, out_p, grad_p)


def test_the_teacher_gives_hidden_states_only_when_the_student_goes_chunk_by_chunk():
    student, teacher = models()
    ids, labels = batch(4)
    kept = int((labels != IGNORE_INDEX).sum())
    whole = TokenDistiller(student, teacher, chunk_size=kept)(ids, labels)
    assert whole.teacher.logits is not None  # one chunk: both models' logits whole
    labels_only = TokenDistiller(student, teacher, chunk_size=3, beta=0.0)(ids, labels)
    assert labels_only.teacher.logits is not None  # no divergence: nothing to compute it for
    # a teacher network without a head to read gives its logits, and the student still chunks
    mixed = TokenDistiller(student, LogitsOnly(teacher), chunk_size=3)(ids, labels)
    assert mixed.teacher.logits is not None and mixed.student.logits is None
    torch.testing.assert_close(
        mixed.loss.total, TokenDistiller(student, teacher, chunk_size=3)(ids, labels).loss.total
    )


@pytest.mark.parametrize(("k", "temperature", "dtype"), [(6, 1.5, "float16"), (V, 1.0, "float32")])
def test_the_chunked_path_with_a_cached_teacher_and_for_the_labels_alone(
    tmp_path, k, temperature, dtype
):
    import numpy as np

    from kdistill.objectives.tokens import NextTokenLoss

    student, teacher = models()
    ids, labels = batch(3)
    layout = CacheLayout(num_samples=3, views_per_sample=1, members=1, num_classes=V,
                         dtype=dtype, topk=k, temperature=temperature, block=L)  # fmt: skip

    def compute(positions, _views):
        with torch.no_grad():
            logits = teacher(ids[torch.from_numpy(positions)])
            return teacher_topk(logits, k, temperature=temperature)

    cache = build_cache(tmp_path / "c", fingerprint="0" * 64, description={}, layout=layout,
                        sample_ids=np.arange(3), views=np.zeros((3, 1), np.int32),
                        compute=compute, batch_size=2, progress=False, log=lambda _: None)  # fmt: skip
    cached = CachedTeacher(cache, temperature=temperature)
    options = dict(temperature=temperature, alpha=0.2, beta=0.8)
    out_c, grad_c = grads(TokenDistiller(student, cached, chunk_size=4, **options), ids, labels,
                          sample_ids=torch.arange(3))  # fmt: skip
    out_p, grad_p = grads(TokenDistiller(LogitsOnly(student), cached, **options), ids, labels,
                          sample_ids=torch.arange(3))  # fmt: skip
    same_step(out_c, grad_c, out_p, grad_p)
    scratch = NextTokenLoss(student, chunk_size=3)
    out_c, grad_c = grads(scratch, ids, labels)
    out_p, grad_p = grads(NextTokenLoss(LogitsOnly(student)), ids, labels)
    kept = labels != IGNORE_INDEX
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(student(ids)[kept], labels[kept])
    torch.testing.assert_close(out_c.loss.total.detach(), ce)
    same_step(out_c, grad_c, out_p, grad_p)


def test_a_batch_with_no_kept_token_adds_nothing():
    student, teacher = models()
    ids, labels = batch(2)
    labels[:] = IGNORE_INDEX
    out, grad = grads(TokenDistiller(student, teacher), ids, labels)
    assert float(out.loss.total.detach()) == 0.0 and int(out.loss.count) == 0
    assert all(float(g.abs().max()) == 0.0 for g in grad)
    # the chunked head with no row at all: 0, and zero gradients
    from kdistill.losses import chunked_head_loss

    hidden = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(V, 8, requires_grad=True)
    total = chunked_head_loss(hidden, weight, lambda logits, at: logits.sum(), chunk_size=3)
    total.backward()
    assert float(total.detach()) == 0.0 and float(weight.grad.abs().max()) == 0.0


def test_logits_that_fit_in_one_chunk_are_computed_whole():
    student, teacher = models()
    ids, labels = batch(4)
    kept = int((labels != IGNORE_INDEX).sum())
    whole = TokenDistiller(student, teacher, chunk_size=kept)(ids, labels)
    chunked = TokenDistiller(student, teacher, chunk_size=kept - 1)(ids, labels)
    assert whole.student.logits is not None and chunked.student.logits is None
    torch.testing.assert_close(whole.loss.total, chunked.loss.total)


def test_evaluation_reads_a_heads_logits_a_chunk_at_a_time(monkeypatch):
    from kdistill.engine import evaluation

    student, _ = models()
    ids, labels = batch(4)
    batches = [Batch(ids, labels, torch.arange(4), None)]
    whole = evaluation.evaluate(LogitsOnly(student), batches, V)
    monkeypatch.setattr(evaluation, "default_chunk_size", lambda vocab: 3)
    chunked = evaluation.evaluate(student, batches, V)
    assert torch.equal(chunked.predictions, whole.predictions)
    for key, value in whole.metrics.items():
        assert chunked.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
