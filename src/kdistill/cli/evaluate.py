"""``kdistill eval``: accuracy of a saved model on a split, rebuilt from its own record."""

from __future__ import annotations

import argparse
import json
import sys

from kdistill.cli.commands import UserError, add_threads_flag, add_trust_code_flag, use_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a saved model (file, run directory or checkpoint directory)",
        description=(
            "Rebuilds the model from the architecture recorded in its file and evaluates it on "
            "the split it was trained with (same dataset, split seed and normalization), unless "
            "told otherwise."
        ),
    )
    p.add_argument(
        "checkpoint", help="model .safetensors, int8 .onnx, run directory or checkpoint directory"
    )
    p.add_argument(
        "--dataset", help="evaluate on another dataset with the same classes and input shape"
    )
    p.add_argument("--data-root", help="dataset location (default: the one recorded at training)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="language models: also print the model's greedy continuation (N tokens) of a few "
        "fixed prompts",
    )
    p.add_argument(
        "--judge",
        metavar="TEACHER",
        help="language models: the model's greedy continuations of held-out prompts (first "
        "sentences of the split's paragraphs) scored by TEACHER (smollm2, a .gguf file, a "
        "Hugging Face directory or a kdistill language model of the same tokenizer): its "
        "negative log-likelihood per continuation token",
    )
    p.add_argument("--judge-prompts", type=int, default=64, metavar="N",
                   help="with --judge: how many prompts (default 64)")  # fmt: skip
    p.add_argument("--judge-tokens", type=int, default=32, metavar="T",
                   help="with --judge: tokens per continuation (default 32)")  # fmt: skip
    p.add_argument(
        "--block",
        type=int,
        help="language models: tokens per block (default: the recorded one; 256 for a "
        "pretrained model, or its context if shorter)",
    )
    lm = p.add_argument_group(
        "post-training quantization (language models: the checkpoint may also be smollm2, a "
        ".gguf file or a Hugging Face directory)"
    )
    lm.add_argument(
        "--weight-bits",
        type=int,
        help="round the weights of the Linear layers (the output head kept) to this many bits "
        "(2..8), symmetric, as the lm_quantization policy does: the baseline of "
        "quantization-aware distillation",
    )
    lm.add_argument(
        "--group-size",
        type=int,
        help="with --weight-bits: input channels per scale (default: one scale per output channel)",
    )
    p.add_argument(
        "--arch",
        help="the architecture you expect the file to hold; an import path given here may be "
        "imported (it is yours), one named only by the file is refused",
    )
    add_trust_code_flag(p)
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    use_threads(args)
    from kdistill.data import BatchLoader
    from kdistill.engine.evaluation import evaluate
    from kdistill.experiment import load_model, resolve_device
    from kdistill.experiment.lm import pretrained_source
    from kdistill.experiment.loading import data_of_model
    from kdistill.trust import CodeTrust

    pretrained = pretrained_source(str(args.checkpoint))
    if args.group_size is not None and args.weight_bits is None:
        raise UserError("--group-size sets the groups of --weight-bits: give --weight-bits too")
    if str(args.checkpoint).endswith(".onnx"):
        model, spec = _onnx_model(args.checkpoint)
    elif pretrained is not None:
        model, spec = _pretrained_model(pretrained, args)
    else:
        loaded = load_model(
            args.checkpoint, arch=args.arch, trust=CodeTrust(everything=args.trust_code)
        )
        model, spec = loaded.model, loaded.spec
        unchecked = "" if loaded.checked else " (written by an older kdistill: weights unchecked)"
        print(
            f"{args.checkpoint} -> {loaded.source.file}{unchecked}",
            file=sys.stderr if args.json else sys.stdout,
        )
    if "tokenizer" in spec.extra:  # a language model
        return _evaluate_language_model(args, model, spec)
    if args.weight_bits is not None or args.block is not None:
        raise UserError("--weight-bits, --group-size and --block apply to language models")
    data = data_of_model(spec, dataset=args.dataset, data_root=args.data_root)
    split = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    if split is None:
        raise ValueError(
            f"{data.name} has no {args.split} split here (it was trained with data.val_fraction=0)"
        )
    device = resolve_device(args.device)
    # A model exported with its normalization folded in takes raw samples.
    raw = getattr(model, "raw_input", False)
    stats = {} if raw else {"mean": spec.mean, "std": spec.std}
    loader = BatchLoader(split, args.batch_size, device=device, **stats)
    metrics = evaluate(
        model.to(device) if hasattr(model, "to") else model, loader, data.num_classes
    ).metrics
    result = {
        "checkpoint": str(args.checkpoint),
        "arch": spec.arch,
        "dataset": data.name,
        "split": args.split,
        "samples": len(split),
        **metrics,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{spec.arch} on {data.name} {args.split} ({len(split)} samples): top-1 {metrics['top1']:.2%}  "
            f"top-5 {metrics['top5']:.2%}  loss {metrics['loss']:.4f}  ECE {metrics['ece']:.3f}"
        )
    return 0


def _pretrained_model(source, args: argparse.Namespace):
    """A pretrained causal LM (``smollm2``, a ``.gguf`` file, a Hugging Face directory) and
    what its evaluation needs to know: its tokenizer, and pydocs unless told otherwise."""
    from kdistill.data.tokenizers import HFTokenizer
    from kdistill.models import ModelSpec
    from kdistill.models.causal_lm import HF_CAUSAL_LM, load_causal_lm

    tokenizer = HFTokenizer(source)
    model = load_causal_lm(source)
    block = args.block or min(256, model.context or 256)
    spec = ModelSpec(
        arch=HF_CAUSAL_LM,
        args={},
        num_classes=tokenizer.vocab_size,
        input_shape=(block,),
        dataset="pydocs",
        extra={
            "data": {"name": "pydocs", "files": [], "block": block},
            "tokenizer": tokenizer.identity,
            "tokenizer_source": str(source),
        },
    )
    return model, spec


def _post_training_quantization(args: argparse.Namespace, model, spec) -> str | None:
    """``--weight-bits`` applied to ``model`` in place; the setting in one word, or ``None``."""
    if args.weight_bits is None:
        return None
    if "lm_qat" in spec.extra:
        raise UserError(
            f"{args.checkpoint} was trained with its weights quantized already "
            f"({spec.extra['lm_qat']}): evaluate it without --weight-bits"
        )
    from kdistill.compression.lm_schedule import fake_quantize
    from kdistill.policies import LanguageModelQuantizationPolicy

    try:
        policy = LanguageModelQuantizationPolicy(
            weight_bits=args.weight_bits, group_size=args.group_size
        )
        fake_quantize(model, policy)
    except ValueError as e:
        raise UserError(str(e).replace("lm_quantization policy: ", "")) from None
    return policy.describe()


def _evaluate_language_model(args: argparse.Namespace, model, spec) -> int:
    """Perplexity, bits per byte and top-1 of a language model on a split of the text it was
    trained on (rebuilt with the tokenizer its file records), and greedy continuations."""
    import math
    import tempfile

    from kdistill.data.text import TokenLoader, build_text_data, token_bytes
    from kdistill.data.tokenizers import tokenizer_from
    from kdistill.engine.evaluation import evaluate
    from kdistill.experiment import resolve_device
    from kdistill.experiment.lm import PROMPTS, greedy_continuation

    recorded = spec.extra.get("data", {})
    tokenizer = tokenizer_from(
        spec.extra.get("tokenizer_source", "bytes"), spec.extra.get("tokenizer")
    )
    name = args.dataset or recorded.get("name", "pydocs")
    files = [args.data_root] if args.data_root else list(recorded.get("files", []))
    quantization = _post_training_quantization(args, model, spec)
    block = args.block or int(recorded.get("block", 128))
    with tempfile.TemporaryDirectory() as cache:
        data = build_text_data(name, files, tokenizer, block, cache)
    blocks = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    device = resolve_device(args.device)
    model = model.to(device)
    metrics = evaluate(
        model, TokenLoader(blocks, args.batch_size, device=device), data.num_classes
    ).metrics
    tokens = blocks.tokens_with_loss()
    nats = metrics["loss"] * tokens
    result = {
        "checkpoint": str(args.checkpoint),
        "arch": spec.arch,
        "dataset": data.name,
        "split": args.split,
        "tokens": tokens,
        "perplexity": metrics["perplexity"],
        "bits_per_byte": nats / (math.log(2) * max(1, blocks.label_bytes(token_bytes(tokenizer)))),
        "top1": metrics["top1"],
        "loss": metrics["loss"],
        **({"quantization": quantization} if quantization else {}),
    }
    if args.generate:
        result["continuations"] = {
            prompt: greedy_continuation(model, tokenizer, prompt, args.generate)
            for prompt in PROMPTS
        }
    if args.judge:
        result.update(_judgement(args, model, tokenizer, name, files).as_dict())
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.judge:
        print(
            f"judged by {args.judge}: {result['judge_nll_per_token']:.3f} nats per token of the "
            f"model's greedy continuations ({result['judged_tokens']:,} tokens of "
            f"{result['judged_prompts']} held-out prompts){_distinct(result)}"
        )
    print(
        f"{spec.arch} on {data.name} {args.split} ({tokens:,} tokens): perplexity "
        f"{result['perplexity']:.2f}  bits per byte {result['bits_per_byte']:.3f}  "
        f"top-1 {metrics['top1']:.2%}"
    )
    for prompt, text in result.get("continuations", {}).items():
        print(f"  {prompt!r} -> {text!r}")
    return 0


def _distinct(result: dict) -> str:
    """The judged continuations' repetitiveness, for the console line."""
    share = result["judged_distinct_bigrams"]
    if share is None:
        return ""
    return f", {share:.0%} of their bigrams distinct (a low share is repetition)"


def _judgement(args: argparse.Namespace, model, tokenizer, name: str, files: list):
    """``--judge``: the judge model loaded (same tokenizer, checked) and its judgement of the
    model's continuations of the split's first prompts."""
    from pathlib import Path

    from kdistill.data.text import split_documents, text_documents
    from kdistill.data.tokenizers import HFTokenizer, tokenizer_from
    from kdistill.experiment import load_model
    from kdistill.experiment.judge import held_out_prompts, judge_continuations
    from kdistill.experiment.lm import pretrained_source
    from kdistill.models.causal_lm import load_causal_lm

    for flag in ("judge_prompts", "judge_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    source = pretrained_source(args.judge)
    if source is not None:
        judge, theirs = load_causal_lm(source), HFTokenizer(source)
    elif Path(args.judge).exists():
        loaded = load_model(args.judge)
        judge = loaded.model
        theirs = tokenizer_from(
            loaded.spec.extra.get("tokenizer_source", "bytes"), loaded.spec.extra.get("tokenizer")
        )
    else:
        raise UserError(
            f"--judge {args.judge}: not smollm2, a .gguf file, a Hugging Face directory or a "
            "kdistill model"
        )
    if theirs.identity != tokenizer.identity:
        raise UserError(
            f"--judge {args.judge} reads the tokenizer {theirs.identity}, the model "
            f"{tokenizer.identity}: the judge scores the model's tokens, which needs one tokenizer"
        )
    documents = split_documents(text_documents(name, files))[args.split]
    prompts = held_out_prompts(documents, args.judge_prompts)
    device = next(iter(model.parameters())).device
    return judge_continuations(model, judge.to(device), tokenizer, prompts, args.judge_tokens)


def _onnx_model(path: str):
    """An ONNX model written by kdistill, as an ``inputs -> logits`` function (marked
    ``raw_input`` when its normalization is folded in), and its spec."""
    from pathlib import Path

    from kdistill.compression.export import onnx_predictor, onnx_session
    from kdistill.models import ModelFileError, ModelSpec

    if not Path(path).is_file():
        raise ModelFileError(f"ONNX model {path} does not exist")
    session = onnx_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    if "kdistill" not in meta:
        raise ModelFileError(f"{path} has no kdistill metadata: it was not exported by kdistill")
    predictor = onnx_predictor(session)
    predictor.raw_input = meta.get("input") == "raw"  # type: ignore[attr-defined]
    return predictor, ModelSpec.from_json(meta["kdistill"], path)
