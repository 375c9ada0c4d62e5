"""A language model's training step: student alone against distilled from a top-k token cache
or from a teacher online, each with full logits ("plain") and chunk by chunk from the models'
hidden states ("chunked", what kdistill's objectives do for its GPTs and ``hf:`` teachers).

The student is a registry GPT at SmolLM2's vocabulary (49,152 tokens); a step is the
objective's forward, the backward and an AdamW update on one batch of ``--batch`` x
``--block`` tokens. The cache is a real one (built once, in a temporary directory, from random
top-k log-probabilities: a step's cost does not depend on their values) read through
``CachedTeacher`` as a run reads it. The online teacher (``--conditions online-plain,
online-chunked``) is a GPT of SmolLM2-135M's widths (576 wide, 9 heads, MLP 1,536) and
vocabulary with ``--teacher-layers`` layers of random weights: what the two paths differ in is
its head and the logits it makes, not its depth. Each measurement is a fresh process; the
conditions run in an order that rotates every round, so that a slow spell of the machine falls on all of
them; the summary gives the medians over rounds of each process's median step time and its
peak resident memory above what it held before the first step.

    python benchmarks/lm_train_step.py --out benchmarks/results/lm_train_step.json
    python benchmarks/lm_train_step.py --conditions online-plain,online-chunked \
        --out benchmarks/results/lm_online_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import provenance, publish
from fused_token_loss import reset_peak, rss_kib

CONDITIONS = ("student-plain", "cached-plain", "student-chunked", "cached-chunked")
ONLINE = ("online-plain", "online-chunked")
VOCAB, TOPK = 49152, 32


def build_cache(path: Path, blocks: int, block: int) -> None:
    import numpy as np
    import torch

    from kdistill.cache import build_cache as build
    from kdistill.cache.store import CacheLayout

    layout = CacheLayout(num_samples=blocks, views_per_sample=1, members=1, num_classes=VOCAB,
                         dtype="float16", topk=TOPK, temperature=1.0, block=block)  # fmt: skip

    def compute(positions, _views):
        g = torch.Generator().manual_seed(int(positions[0]))
        logits = torch.randn(len(positions), block, TOPK + 1, generator=g)
        logprobs = torch.log_softmax(logits, -1)[..., :TOPK].sort(-1, descending=True).values
        ids = torch.randint(0, VOCAB, (len(positions), block, TOPK), generator=g)
        return ids, logprobs

    build(path, fingerprint="0" * 64, description={"benchmark": "lm_train_step"}, layout=layout,
          sample_ids=np.arange(blocks), views=np.zeros((blocks, 1), np.int32), compute=compute,
          batch_size=8, progress=False, log=lambda _: None)  # fmt: skip


class LogitsOnly:
    """Hides the GPT's head from the objective: it computes the full logits."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, ids):
                return self.model(ids)

        return Wrapped()


def one(
    condition: str, cache_dir: str, arch: str, batch: int, block: int, steps: int, layers: int
) -> dict:
    import torch

    from kdistill.cache import open_cache
    from kdistill.models.gpt import GPT, GPT_SIZES
    from kdistill.objectives.tokens import NextTokenLoss, TokenDistiller
    from kdistill.teachers.cached import CachedTeacher

    torch.manual_seed(0)
    student = GPT(VOCAB, block, **GPT_SIZES[arch])
    net = LogitsOnly(student) if condition.endswith("plain") else student
    if condition.startswith("cached"):
        teacher = CachedTeacher(open_cache(Path(cache_dir), "0" * 64), temperature=1.0)
        objective = TokenDistiller(net, teacher, alpha=0.1, beta=0.9)
    elif condition.startswith("online"):
        teacher = GPT(VOCAB, block, dim=576, layers=layers, heads=9, hidden=1536).eval()
        # plain: the teacher's full logits too (a network without a head to read)
        teacher = LogitsOnly(teacher) if condition.endswith("plain") else teacher
        objective = TokenDistiller(net, teacher, alpha=0.1, beta=0.9)
    else:
        objective = NextTokenLoss(net)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(steps + 1):
        ids = torch.randint(0, VOCAB, (batch, block), generator=g)
        labels = torch.roll(ids, -1, dims=1)
        sample_ids = torch.arange(step * batch, (step + 1) * batch) % 64
        if step == 1:  # the first step warms up; the peak is over the timed ones
            reset_peak()
            before = rss_kib("VmRSS")
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = objective(ids, labels, sample_ids=sample_ids)
        out.loss.total.backward()
        optimizer.step()
        if step >= 1:
            times.append(time.perf_counter() - started)
    return {
        "condition": condition,
        "median_step_s": statistics.median(times),
        "extra_peak_mib": (rss_kib("VmHWM") - before) / 1024,
        "loss": float(out.loss.total.detach()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="gpt_micro")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help=f"of {', '.join(CONDITIONS + ONLINE)}")  # fmt: skip
    p.add_argument("--teacher-layers", type=int, default=2, help="the online teacher's depth")
    p.add_argument("--out")
    p.add_argument("--one", nargs=2, metavar=("CONDITION", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = ["--arch", args.arch, "--batch", str(args.batch), "--block", str(args.block),
             "--steps", str(args.steps), "--teacher-layers", str(args.teacher_layers)]  # fmt: skip
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.arch, args.batch, args.block,
                             args.steps, args.teacher_layers)))  # fmt: skip
        return
    conditions = tuple(args.conditions.split(","))
    unknown = set(conditions) - set(CONDITIONS + ONLINE)
    if unknown:
        p.error(f"unknown conditions {sorted(unknown)}; valid: {', '.join(CONDITIONS + ONLINE)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        build_cache(cache, 64, args.block)
        for r in range(args.rounds):
            turn = r % len(conditions)
            order = conditions[turn:] + conditions[:turn]
            for condition in order:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", condition, str(cache), *shape],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                rows.append({"round": r, **json.loads(done.stdout.strip().splitlines()[-1])})
                print(rows[-1], flush=True)
    of = {c: [row for row in rows if row["condition"] == c] for c in conditions}
    step = {c: statistics.median(row["median_step_s"] for row in of[c]) for c in conditions}
    memory = {c: statistics.median(row["extra_peak_mib"] for row in of[c]) for c in conditions}

    def ratio(a: str, b: str) -> float:  # median over rounds of the round's own ratio
        mine = {row["round"]: row["median_step_s"] for row in of[a]}
        return statistics.median(mine[row["round"]] / row["median_step_s"] for row in of[b])

    ratios = {  # the ratios whose two conditions were measured
        "cached_over_student_chunked": ("cached-chunked", "student-chunked"),
        "cached_over_student_plain": ("cached-plain", "student-plain"),
        "chunked_over_plain_student": ("student-chunked", "student-plain"),
        "chunked_over_plain_cached": ("cached-chunked", "cached-plain"),
        "chunked_over_plain_online": ("online-chunked", "online-plain"),
    }
    summary = {
        "median_step_s": step,
        "extra_peak_mib": memory,
        **{name: ratio(a, b) for name, (a, b) in ratios.items() if a in of and b in of},
        **{
            f"memory_chunked_over_plain_{kind}": memory[f"{kind}-chunked"] / memory[f"{kind}-plain"]
            for kind in ("student", "cached", "online")
            if f"{kind}-chunked" in of and f"{kind}-plain" in of
        },
        "tokens_per_step": args.batch * args.block,
    }
    publish(
        {**provenance("lm_train_step.py"), "arch": args.arch, "vocab": VOCAB, "topk": TOPK,
         "teacher_layers": args.teacher_layers if set(conditions) & set(ONLINE) else None,
         "summary": summary, "rows": rows},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
