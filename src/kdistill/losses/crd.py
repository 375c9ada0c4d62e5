"""Contrastive representation distillation (Tian et al., ICLR 2020).

CRD keeps state, so it is a module rather than a pure function: two embedding heads (a linear
map and L2 normalization, one per network), a memory bank of every training sample's embedding
for each network, and the constants of its NCE estimate. Its loss, for the student's embedding
``s_i`` of sample ``i`` against the teacher's memory (and symmetrically the teacher's embedding
against the student's memory):

* scores ``h(x, m) = exp(<x, m> / tau) / Z`` for the positive (sample ``i``'s own memory row)
  and ``K`` negatives (rows of samples of other classes, drawn uniformly), ``Z`` estimated once
  from the first batch as ``mean(exp(<x, m> / tau)) * n`` and then kept fixed;
* NCE with noise ``P_n = 1 / n``: ``-[log(h_pos / (h_pos + K P_n)) +
  sum_k log(K P_n / (h_k + K P_n))]``, summed over samples and divided by the batch size;
* after the step, each sample's memory rows move towards its new embedding with momentum
  ``m`` and are renormalized.

Memory rows are indexed by kdistill's stable sample ids (the dataset's own indices), so the same
sample always meets its own row, across epochs, augmentation views and processes. In
data-parallel training every process applies every process's update, so the banks stay equal.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _gather(x: Tensor) -> Tensor:
    """``x`` from every process of a data-parallel run, concatenated (``x`` alone otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def nce_loss(scores: Tensor, num_samples: int) -> Tensor:
    """NCE loss of ``(B, K + 1)`` scores whose first column is the positive; the noise
    distribution is uniform over ``num_samples`` samples."""
    k = scores.shape[1] - 1
    noise = k / num_samples  # K * P_n
    eps = 1e-7
    positive = scores[:, 0]
    negatives = scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (negatives + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class CRDLoss(nn.Module):
    """CRD's heads, memory banks and NCE loss.

    Args:
        student_dim, teacher_dim: sizes of the flattened student and teacher features.
        sample_ids: ``(n,)`` the stable ids of the training samples (memory rows follow them).
        labels: ``(n,)`` their classes: negatives are drawn from other classes.
        feat_dim: embedding size. nce_k: negatives per sample (at most the number of samples
        of the other classes). nce_t: temperature. nce_m: memory momentum.

    Call as ``loss(student_features, teacher_features, sample_ids)``; the trainable parameters
    are the two heads; the memory and ``Z`` are buffers (saved with ``state_dict``).
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        sample_ids: Tensor,
        labels: Tensor,
        *,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
    ) -> None:
        super().__init__()
        n = int(sample_ids.numel())
        if n < 2 or labels.shape != sample_ids.shape:
            raise ValueError(f"CRD needs at least 2 training samples with labels, got {n}")
        counts = torch.bincount(labels)
        smallest_other = n - int(counts.max())
        if smallest_other < 1:
            raise ValueError("CRD draws negatives from other classes, but the data has one class")
        if nce_k < 1 or not 0 <= nce_m < 1 or nce_t <= 0 or feat_dim < 1:
            raise ValueError(
                f"CRD needs nce_k >= 1, 0 <= nce_m < 1, nce_t > 0 and feat_dim >= 1; got nce_k="
                f"{nce_k}, nce_m={nce_m}, nce_t={nce_t}, feat_dim={feat_dim}"
            )
        self.nce_k = min(int(nce_k), smallest_other)
        self.nce_t = float(nce_t)
        self.nce_m = float(nce_m)
        self.num_samples = n
        self.embed_student = nn.Linear(student_dim, feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, feat_dim)
        row_of_id = torch.full((int(sample_ids.max()) + 1,), -1, dtype=torch.long)
        row_of_id[sample_ids] = torch.arange(n)
        self.register_buffer("row_of_id", row_of_id, persistent=False)
        # Rows sorted by class, so "a sample of another class" is an index into a contiguous
        # range with the sample's own class block skipped.
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.register_buffer("labels", labels.clone(), persistent=False)
        self.register_buffer("by_class", order, persistent=False)
        self.register_buffer("class_start", starts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_student", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_teacher", torch.rand(n, feat_dim) * 2 * bound - bound)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def rows(self, sample_ids: Tensor) -> Tensor:
        """Memory rows of these sample ids; ``ValueError`` for ids outside the training set."""
        ids = sample_ids.to(self.row_of_id.device)
        if bool((ids < 0).any()) or bool((ids >= self.row_of_id.numel()).any()):
            raise ValueError("CRD got sample ids outside the training set it was built for")
        rows = self.row_of_id[ids]
        if bool((rows < 0).any()):
            raise ValueError("CRD got sample ids outside the training set it was built for")
        return rows

    def negatives(self, rows: Tensor) -> Tensor:
        """``(B, K)`` rows of samples of other classes than each of ``rows``, uniformly."""
        cls = self.labels[rows]
        others = self.num_samples - self.class_count[cls]
        u = (torch.rand(rows.numel(), self.nce_k, device=rows.device) * others.unsqueeze(1)).long()
        u = torch.minimum(u, (others - 1).unsqueeze(1))
        start = self.class_start[cls].unsqueeze(1)
        u = u + (u >= start) * self.class_count[cls].unsqueeze(1)  # skip the own class block
        return self.by_class[u]

    def _scores(self, x: Tensor, memory: Tensor, index: Tensor, z: Tensor) -> Tensor:
        # <x_i, m_j> for every memory row, then the K + 1 asked for: the (B, n) products take
        # far less memory traffic than gathering (B, K + 1, D) memory rows (n = 60,000 against
        # K = 16,384 and D = 128 on Fashion-MNIST: 35x less), and the same arithmetic.
        dots = (x @ memory.t()).gather(1, index)
        scores = torch.exp(dots / self.nce_t)
        if float(z) < 0:  # the first batch fixes the normalization constant
            estimate = _gather(scores.detach().mean().reshape(1)).mean() * self.num_samples
            z.fill_(float(estimate))
        return scores / z

    def forward(
        self, student_features: Tensor, teacher_features: Tensor, sample_ids: Tensor
    ) -> Tensor:
        if sample_ids is None:
            raise ValueError("CRD needs the batch's sample ids (its memory is indexed by them)")
        s = F.normalize(self.embed_student(student_features.flatten(1).float()), dim=1)
        t = F.normalize(self.embed_teacher(teacher_features.detach().flatten(1).float()), dim=1)
        rows = self.rows(sample_ids)
        index = torch.cat([rows.unsqueeze(1), self.negatives(rows)], dim=1)
        # The student's embedding against the teacher's memory, and the other way round.
        student_scores = self._scores(s, self.memory_teacher, index, self.z_student)
        teacher_scores = self._scores(t, self.memory_student, index, self.z_teacher)
        loss = nce_loss(student_scores, self.num_samples) + nce_loss(
            teacher_scores, self.num_samples
        )
        if self.training:
            self._update_memory(rows, s.detach(), t.detach())
        return loss

    @torch.no_grad()
    def _update_memory(self, rows: Tensor, s: Tensor, t: Tensor) -> None:
        rows, s, t = _gather(rows), _gather(s), _gather(t)
        for name, x in (("memory_student", s), ("memory_teacher", t)):
            memory = getattr(self, name)
            moved = F.normalize(memory[rows] * self.nce_m + x * (1 - self.nce_m), dim=1)
            # A new tensor, not an in-place write: this step's backward still needs the memory
            # its scores were computed from.
            setattr(self, name, memory.index_copy(0, rows, moved))
