"""``kdistill merge``: a student trained with low-rank adapters (``model.lora``), its adapters
folded into its weights, written as a plain model: a Hugging Face directory for a pretrained
student, a kdistill model file for a kdistill GPT."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from kdistill.cli.commands import UserError, add_threads_flag, use_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="fold a run's low-rank adapters into its weights and write the plain model",
        description=(
            "Loads a model file (or run directory) of a student trained with model.lora, merges "
            "every adapter into its frozen weight (W + alpha/rank B A) and writes the model "
            "without adapters: a Hugging Face directory with its tokenizer when the student "
            "started from a pretrained causal LM, else a kdistill model file. The merged model "
            "computes what the adapted one did."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a run directory or model .safetensors file")
    p.add_argument("--out", required=True, help="a new directory (or, for a GPT, a new file)")
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    use_threads(args)
    from kdistill.compression.lm_pruning import save_hf_directory
    from kdistill.compression.lora import merge_adapters
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.experiment import load_model
    from kdistill.models.causal_lm import HF_CAUSAL_LM
    from kdistill.models.files import save_model_file

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out} exists: choose a new path")
    loaded = load_model(args.model)
    spec = loaded.spec
    if "lora" not in spec.extra:
        raise UserError(
            f"{args.model} has no low-rank adapters (it was not trained with model.lora)"
        )
    model = loaded.model
    merged = merge_adapters(model)
    extra = {k: v for k, v in spec.extra.items() if k != "lora"}
    if spec.arch == HF_CAUSAL_LM:
        tokenizer = HFTokenizer(spec.extra["tokenizer_source"])
        save_hf_directory(model, tokenizer, out)
    else:
        save_model_file(out, model.state_dict(), replace(spec, extra=extra))
    print(f"{merged} adapters merged; the plain model is in {out}")
    return 0
