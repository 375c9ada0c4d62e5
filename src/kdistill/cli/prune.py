"""``kdistill prune``: a pretrained causal LM measured on calibration text and cut down by
importance into a smaller model of its family (Minitron), for a run to recover by
distillation."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdistill.cli.commands import UserError, add_threads_flag, use_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="measure a pretrained language model's parts and prune it into a smaller one",
        description=(
            "Measures the importance of every layer, attention head, MLP channel and hidden "
            "channel of a Llama-family causal LM from its activations on calibration text, "
            "then keeps the most important at the sizes asked for (explicit sizes, or "
            "--params with --axis) and writes the smaller model, its tokenizer, importance.json, "
            "pruning.json and importance.png as a Hugging Face directory. Recover it by "
            "distillation from the original: model.checkpoint=<DIR> "
            "kd.teachers=[{checkpoint: <MODEL>}]. Without sizes it only measures."
        ),
    )
    p.add_argument(
        "model", metavar="MODEL", help="smollm2, a .gguf file or a Hugging Face directory"
    )
    p.add_argument("--out", required=True, help="a new directory for the pruned model")
    sizes = p.add_argument_group("sizes (each optional; the original's by default)")
    for name, what in (
        ("layers", "decoder layers to keep"),
        ("hidden", "hidden (embedding) width, a multiple of the query heads"),
        ("kv-heads", "key/value heads per layer"),
        ("heads-per-group", "query heads per key/value head"),
        ("intermediate", "MLP width"),
    ):
        sizes.add_argument(f"--{name}", type=int, help=what)
    p.add_argument(
        "--params",
        type=float,
        help="instead of sizes: the non-embedding parameters to keep, a count (3.2e7) or a "
        "fraction of the model's (0.5)",
    )
    p.add_argument("--axis", choices=("width", "depth", "both"), default="width",
                   help="what --params narrows (default: width)")  # fmt: skip
    p.add_argument("--layer-metric", choices=("perplexity", "cosine"), default="perplexity",
                   help="which layers go: the least perplexity lost when skipped, or the least "
                   "change from input to output")  # fmt: skip
    p.add_argument("--data", default="pydocs", help="calibration text: pydocs, or text (--files)")
    p.add_argument("--files", nargs="*", default=[], help="text / jsonl files for --data text")
    p.add_argument("--block", type=int, default=256, help="tokens per calibration block")
    p.add_argument("--tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    p.add_argument(
        "--importance",
        metavar="FILE",
        help="an importance.json an earlier kdistill prune of the same model wrote: prune by it "
        "instead of measuring again (the calibration text still measures the pruned model)",
    )
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    use_threads(args)
    explicit = {
        "layers": args.layers,
        "hidden": args.hidden,
        "kv_heads": args.kv_heads,
        "heads_per_group": args.heads_per_group,
        "intermediate": args.intermediate,
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and args.params is not None:
        raise UserError("give explicit sizes or --params, not both")
    if args.tokens < 1 or args.block < 2:
        raise UserError(
            f"--tokens must be positive and --block at least 2, got {args.tokens}, {args.block}"
        )
    from kdistill.compression.lm_pruning import PruneSizes
    from kdistill.experiment.lm_prune import prune_language_model

    if args.params is not None and args.params <= 0:
        raise UserError(f"--params must be positive, got {args.params:g}")
    sizes = PruneSizes(**given) if given else None
    importance = _read_importance(Path(args.importance)) if args.importance else None
    if importance is not None and sizes is None and args.params is None:
        raise UserError("--importance prunes by an earlier measurement: give sizes or --params")
    prune_language_model(
        args.model, Path(args.out), sizes=sizes, params=args.params, axis=args.axis,
        layer_metric=args.layer_metric, data=args.data, files=args.files, block=args.block,
        tokens=args.tokens, importance=importance,
    )  # fmt: skip
    return 0


def _read_importance(path: Path):
    """An ``importance.json`` (JSON only: nothing read runs code), its arrays checked."""
    import json

    from kdistill.compression.lm_importance import Importance

    try:
        return Importance.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"--importance {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise UserError(
            f"--importance {path} is not an importance.json kdistill prune wrote: {what}"
        ) from None
