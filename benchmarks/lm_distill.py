"""Token-level distillation of a byte-level GPT on CPython's language reference: every kind of
divergence against the scratch baseline, online and from a top-32 teacher cache, over seeds.

The teacher is the recipe ``pydocs/gpt-teacher`` (gpt_micro, trained once here); every student
is ``pydocs/gpt-scratch``'s (gpt_nano, the same budget: 2 epochs, batch 32 x 128 bytes) with
the settings of ``pydocs/gpt-distill`` and the divergence changed. Each run is one process-free
``kdistill.experiment.run`` in this process, one after the other (timings comparable within one
invocation). Reported: test perplexity and bits per byte (mean and standard deviation over
seeds), the median epoch time and tokens per second, and the share of the gap in
log-perplexity between scratch and teacher that each row closes.

    python benchmarks/lm_distill.py --seeds 0,1,2 --out benchmarks/results/lm_distill.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import provenance, publish

ROWS: dict[str, dict[str, Any]] = {
    "scratch": {},
    "forward KL": {"kd.token_loss": "forward_kl"},
    "reverse KL": {"kd.token_loss": "reverse_kl"},
    "JSD(0.5)": {"kd.token_loss": "jsd", "kd.jsd_beta": 0.5},
    "skew forward KL (0.1)": {"kd.token_loss": "skew_forward_kl", "kd.skew": 0.1},
    "forward KL, cached top-32": {
        "kd.token_loss": "forward_kl",
        "kd.teacher_cache.enabled": True,
        "kd.teacher_cache.topk": 32,
    },
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the students")
    p.add_argument("--work", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--out", help="write the result JSON here too")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from kdistill.config import load_config
    from kdistill.experiment import run

    quiet = {"progress": False, "log": lambda _: None, "force": True}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(args.work or tmp))
        teacher_cfg = load_config("pydocs/gpt-teacher", values={"out_dir": out})
        teacher = run(teacher_cfg, **quiet).record
        rows: dict[str, list[Any]] = {name: [] for name in ROWS}
        for seed in seeds:
            for name, values in ROWS.items():
                recipe = "pydocs/gpt-scratch" if name == "scratch" else "pydocs/gpt-distill"
                settings: dict[str, Any] = {"out_dir": out, "train.seed": seed, **values}
                if name != "scratch":
                    settings["kd.teachers.0.checkpoint"] = str(Path(out) / teacher_cfg.name)
                record = run(load_config(recipe, values=settings), **quiet).record
                rows[name].append(record)
    scratch = statistics.mean(math.log(r.test_perplexity) for r in rows["scratch"])
    gap = scratch - math.log(teacher.test_perplexity)
    table = {}
    for name, records in rows.items():
        ppl = [r.test_perplexity for r in records]
        bpb = [r.test_bits_per_byte for r in records]
        log_ppl = statistics.mean(math.log(v) for v in ppl)
        table[name] = {
            "test_perplexity": ppl,
            "perplexity_mean": statistics.mean(ppl),
            "perplexity_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "bits_per_byte_mean": statistics.mean(bpb),
            "bits_per_byte_std": statistics.stdev(bpb) if len(bpb) > 1 else 0.0,
            "median_epoch_s": statistics.median(t for r in records for t in r.epoch_times_s),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in records),
            "gap_closed": (scratch - log_ppl) / gap if gap > 0 else None,
        }
    report = {
        **provenance("lm_distill.py"),
        "seeds": seeds,
        "teacher": {
            "arch": teacher.arch,
            "params": teacher.params,
            "test_perplexity": teacher.test_perplexity,
            "bits_per_byte": teacher.test_bits_per_byte,
        },
        "student": {"arch": rows["scratch"][0].arch, "params": rows["scratch"][0].params},
        "test_tokens": rows["scratch"][0].test_tokens,
        "rows": table,
    }
    publish(report, args.out)


if __name__ == "__main__":
    main()
