"""CrossTokenizerDistiller against a float64 loss written out from the alignment: a student
over a byte-level BPE vocabulary taught by a teacher over UTF-8 bytes."""

import pytest
import torch
from torch import nn

from kdistill.data.alignment import ByteAligner
from kdistill.data.tokenizers import ByteTokenizer
from kdistill.objectives.cross_tokenizer import CrossTokenizerDistiller
from kdistill.types import IGNORE_INDEX

from ..data.test_alignment import WORDS, byte_level_bpe

pytest.importorskip("tokenizers")


def tiny_lm(vocab, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))


def batch(student):
    text = ["the cat the cat", " cat the éthe"]
    rows = [student.encode(t) for t in text]
    width = min(map(len, rows)) - 1
    ids = torch.tensor([r[: width + 1] for r in rows])
    inputs, targets = ids[:, :-1].clone(), ids[:, 1:].clone()
    targets[0, 0] = IGNORE_INDEX  # a prompt token: no loss, no divergence
    return inputs, targets


def reference(student, teacher, aligner, inputs, targets, method, alpha, beta, t):
    """alpha * CE + beta * T^2 * D summed over aligned kept positions, over the kept tokens."""
    mapping = aligner.vocabulary_map()
    vocab = len(aligner.student_bytes)
    s_logits = student(inputs).double()
    ce = kl = 0.0
    kept = int((targets != IGNORE_INDEX).sum())
    for b in range(inputs.shape[0]):
        for i in range(inputs.shape[1]):
            if targets[b, i] != IGNORE_INDEX:
                ce = ce - torch.log_softmax(s_logits[b, i], -1)[targets[b, i]]
        view = aligner.view(inputs[b].tolist())
        with torch.no_grad():
            t_logits = teacher(torch.tensor([view.ids])).double()[0]
        for i, j in zip(view.student, view.teacher, strict=True):
            if targets[b, i] == IGNORE_INDEX:
                continue
            p_t = torch.softmax(t_logits[j] / t, -1)
            log_s = torch.log_softmax(s_logits[b, i] / t, -1)
            if method == "uld":
                a = torch.sort(log_s.exp(), descending=True).values
                c = torch.sort(p_t, descending=True).values
                n = max(len(a), len(c))  # the shorter padded with zeros
                a, c = (torch.cat([x, x.new_zeros(n - len(x))]) for x in (a, c))
                kl = kl + (a - c).abs().sum()
            else:
                q = torch.zeros(vocab, dtype=torch.float64)
                for v, s in enumerate(mapping.tolist()):
                    if s >= 0:
                        q[s] += p_t[v]
                q = q / q.sum()
                nz = q > 0
                kl = kl + (q[nz] * (q[nz].log() - log_s[nz])).sum()
    return (alpha * ce + beta * t * t * kl) / kept


@pytest.mark.parametrize("method", ["spans", "uld"])
def test_loss_and_gradient_equal_a_float64_reference(tmp_path, method):
    student_tok = byte_level_bpe(tmp_path / "s", WORDS)
    aligner = ByteAligner(student_tok, ByteTokenizer())
    student, teacher = tiny_lm(student_tok.vocab_size, 0), tiny_lm(257, 1)
    inputs, targets = batch(student_tok)
    objective = CrossTokenizerDistiller(
        student, teacher, aligner, method=method, temperature=2.0, alpha=0.3, beta=0.7
    )
    out = objective(inputs, targets)
    out.loss.total.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    expected = reference(student, teacher, aligner, inputs, targets, method, 0.3, 0.7, 2.0)
    expected.backward()
    assert out.loss.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert int(out.loss.count) == int((targets != IGNORE_INDEX).sum())
    for a, b in zip(got, (p.grad for p in student.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_chunked_student_head_gives_the_same_loss(tmp_path):
    """A student whose loss goes chunk by chunk (an output head over its last hidden states)
    gets the same cross-tokenizer loss as computed whole."""
    from kdistill.models.gpt import GPT

    student_tok = byte_level_bpe(tmp_path / "s", WORDS)
    aligner = ByteAligner(student_tok, ByteTokenizer())
    torch.manual_seed(0)
    student = GPT(vocab_size=student_tok.vocab_size, context=16, layers=1, dim=16, heads=2)
    teacher = tiny_lm(257, 1)
    inputs, targets = batch(student_tok)
    whole = CrossTokenizerDistiller(student, teacher, aligner, chunk_size=10_000)(inputs, targets)
    chunked = CrossTokenizerDistiller(student, teacher, aligner, chunk_size=3)(inputs, targets)
    assert chunked.loss.total.item() == pytest.approx(whole.loss.total.item(), rel=1e-5)


def test_reverse_kl_spans_is_refused_by_name(tmp_path):
    student_tok = byte_level_bpe(tmp_path / "s", WORDS)
    aligner = ByteAligner(student_tok, ByteTokenizer())
    with pytest.raises(ValueError, match="reverse KL is infinite"):
        CrossTokenizerDistiller(tiny_lm(300, 0), tiny_lm(257, 1), aligner, kind="reverse_kl")
