"""Memory and time of the token-level distillation loss, plain against fused (chunked).

The plain path makes both models' full ``(tokens, vocab)`` logits and calls
``token_divergence``; the fused path (``fused_token_divergence``) takes the student's last
hidden states and head, and the teacher's, and never holds either model's full logits. Each
measurement is a fresh process (so one measurement's allocator does not serve another's):
it allocates the inputs, then runs forward + backward ``--repeats`` times; the peak resident
memory above what the inputs took is the loss's extra memory, and the median time is its time.

    python benchmarks/fused_token_loss.py --out benchmarks/results/fused_token_loss.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import provenance, publish

VOCABS = (49152, 128256)  # SmolLM2's vocabulary, and Llama 3's
TOKENS, HIDDEN = 2048, 576


def rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM the current RSS (Linux: writing 5 to clear_refs resets the peak)."""
    Path("/proc/self/clear_refs").write_text("5")


def one(mode: str, vocab: int, chunk: int, repeats: int) -> dict:
    import torch

    from kdistill.losses import fused_token_divergence, token_divergence

    torch.manual_seed(0)
    hidden = torch.randn(1, TOKENS, HIDDEN, requires_grad=True)
    head = (torch.randn(vocab, HIDDEN) * 0.05).requires_grad_(True)
    t_hidden = torch.randn(1, TOKENS, HIDDEN)
    t_head = torch.randn(vocab, HIDDEN) * 0.05
    labels = torch.randint(0, vocab, (1, TOKENS))
    times = []
    for i in range(repeats + 1):
        hidden.grad = head.grad = None
        if i == 1:  # the first pass warms up; the peak is measured over the timed ones
            reset_peak()
            before = rss_kib("VmRSS")
        started = time.perf_counter()
        if mode == "plain":
            loss = token_divergence(hidden @ head.T, t_hidden @ t_head.T, labels, temperature=2.0)
        else:
            loss = fused_token_divergence(
                hidden, head, (t_hidden, t_head), labels, temperature=2.0, chunk_size=chunk
            )
        loss.backward()
        if i >= 1:
            times.append(time.perf_counter() - started)
    return {
        "mode": mode,
        "vocab": vocab,
        "chunk_size": chunk if mode == "fused" else None,
        "loss": float(loss),
        "extra_peak_mib": (rss_kib("VmHWM") - before) / 1024,
        "median_s": statistics.median(times),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk", type=int, default=256, help="fused: tokens per chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    p.add_argument("--one", nargs=2, metavar=("MODE", "VOCAB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.chunk, args.repeats)))
        return
    rows = []
    for vocab in VOCABS:
        for mode in ("plain", "fused", "plain", "fused"):  # alternated: drift hits both
            done = subprocess.run(
                [sys.executable, __file__, "--one", mode, str(vocab), "--chunk", str(args.chunk),
                 "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    for vocab in VOCABS:
        of = {
            m: [r for r in rows if r["vocab"] == vocab and r["mode"] == m]
            for m in ("plain", "fused")
        }
        plain_mem = statistics.median(r["extra_peak_mib"] for r in of["plain"])
        fused_mem = statistics.median(r["extra_peak_mib"] for r in of["fused"])
        plain_s = statistics.median(r["median_s"] for r in of["plain"])
        fused_s = statistics.median(r["median_s"] for r in of["fused"])
        summary[str(vocab)] = {
            "plain_extra_mib": plain_mem,
            "fused_extra_mib": fused_mem,
            "memory_fused_over_plain": fused_mem / plain_mem,
            "plain_s": plain_s,
            "fused_s": fused_s,
            "time_fused_over_plain": fused_s / plain_s,
            "same_loss": max(
                abs(a["loss"] - b["loss"]) / abs(a["loss"])
                for a in of["plain"]
                for b in of["fused"]
            )
            < 1e-5,
        }
    publish(
        {**provenance("fused_token_loss.py"), "tokens": TOKENS, "hidden": HIDDEN,
         "summary": summary, "rows": rows},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
