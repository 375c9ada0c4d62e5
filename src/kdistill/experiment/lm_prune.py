"""``kdistill prune``: measure a pretrained causal LM's parts on calibration text and write a
smaller model of the same family, kept by importance (Minitron's width and depth pruning),
as a Hugging Face directory that a run then recovers by distillation from the original
(``model.checkpoint: <the directory>``, ``kd.teachers: [{checkpoint: <the original>}]``)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kdistill.compression.lm_importance import (
    Importance,
    activation_importance,
    calibration_perplexity,
    calibration_sample,
    llama_shape,
)
from kdistill.compression.lm_pruning import (
    PruneSizes,
    plan_pruning,
    prune_llama,
    save_hf_directory,
    sizes_for_parameters,
)
from kdistill.data.text import build_text_data
from kdistill.data.tokenizers import HFTokenizer
from kdistill.experiment.lm import pretrained_source
from kdistill.models.causal_lm import load_causal_lm
from kdistill.reporting.figures import layer_importance
from kdistill.types import IGNORE_INDEX

IMPORTANCE_FILE, PRUNING_FILE, FIGURE_FILE = "importance.json", "pruning.json", "importance.png"


def calibration_batches(
    tokenizer: HFTokenizer, data: str, files: list[str], block: int, tokens: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``tokens`` labelled tokens of the training split, shuffled with seed 0, in
    batches of 8 blocks."""
    with tempfile.TemporaryDirectory() as cache:
        text = build_text_data(data, files, tokenizer, block, cache)
    return calibration_sample(text.train, tokens)


def prune_language_model(
    reference: str,
    out: Path,
    *,
    sizes: PruneSizes | None = None,
    params: float | None = None,
    axis: str = "width",
    layer_metric: str = "perplexity",
    data: str = "pydocs",
    files: list[str] | None = None,
    block: int = 256,
    tokens: int = 4096,
    importance: Importance | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure ``reference`` (``smollm2``, a ``.gguf`` file, a Hugging Face directory) and, unless
    neither ``sizes`` nor ``params`` is given, prune it into ``out``; returns what was written to
    ``pruning.json`` (or the importance alone). ``params``: the non-embedding parameters to keep,
    a count, or at most 1 a fraction of the model's. ``importance``: an earlier measurement of
    the same model (its ``importance.json``) instead of measuring again."""
    source = pretrained_source(reference)
    if source is None:
        raise ValueError(
            f"{reference} is not a pretrained causal LM (smollm2, a .gguf file or a Hugging Face "
            "model directory)"
        )
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new directory")
    model = load_causal_lm(source)
    tokenizer = HFTokenizer(source)
    shape = llama_shape(model)
    batches = calibration_batches(tokenizer, data, list(files or []), block, tokens)
    if importance is None:
        log(
            f"measuring {source.name}'s parts on "
            f"{sum(int((y != IGNORE_INDEX).sum()) for _, y in batches):,} tokens"
        )
        importance = activation_importance(model, batches)
    summary: dict[str, Any] = {
        "source": str(source),
        "calibration": {
            "data": data,
            "files": list(files or []),
            "block": block,
            "tokens": importance.tokens,
        },
        "perplexity": importance.perplexity,
        "shape": asdict(shape),
        "params": shape.params(),
        "non_embedding_params": shape.non_embedding_params(),
        "layers": importance.layer_table(),
    }
    _log_layers(importance, log)

    def write_measurement(directory: Path) -> None:
        (directory / IMPORTANCE_FILE).write_text(json.dumps(importance.to_dict()))
        layer_importance(importance.layer_table(), importance.perplexity, directory / FIGURE_FILE)

    if sizes is None and params is None:
        out.mkdir(parents=True)
        write_measurement(out)
        (out / PRUNING_FILE).write_text(json.dumps(summary, indent=2))
        return summary
    if sizes is None:
        assert params is not None
        total = shape.non_embedding_params()
        target = round(total * params) if params <= 1 else int(params)
        sizes = sizes_for_parameters(shape, target, axis)
    plan = plan_pruning(importance, shape, sizes, layer_metric=layer_metric)
    pruned = prune_llama(model, plan)
    after = llama_shape(pruned)
    pruned_ppl = calibration_perplexity(pruned, batches)
    summary.update(
        sizes=asdict(sizes),
        layer_metric=layer_metric,
        pruned_shape=asdict(after),
        pruned_params=after.params(),
        pruned_non_embedding_params=after.non_embedding_params(),
        pruned_perplexity=pruned_ppl,
        kept=plan.to_dict(),
    )

    def write_all(directory: Path) -> None:
        write_measurement(directory)
        (directory / PRUNING_FILE).write_text(json.dumps(summary, indent=2))

    save_hf_directory(pruned, tokenizer, out, write_extra=write_all)
    log(
        f"pruned: {shape.params():,} -> {after.params():,} parameters (non-embedding "
        f"{shape.non_embedding_params():,} -> {after.non_embedding_params():,}); layers "
        f"{shape.layers} -> {after.layers}, hidden {shape.hidden} -> {after.hidden}, heads "
        f"{shape.heads}/{shape.kv_heads} -> {after.heads}/{after.kv_heads}, MLP "
        f"{shape.intermediate} -> {after.intermediate}; calibration perplexity "
        f"{importance.perplexity:.2f} -> {pruned_ppl:.2f}; written to {out}"
    )
    return summary


def _log_layers(importance: Importance, log: Callable[[str], None]) -> None:
    log(f"calibration perplexity {importance.perplexity:.2f}; per layer:")
    log("layer  perplexity if skipped  1 - cos(in, out)")
    for row in importance.layer_table():
        log(
            f"{row['layer']:>5}  {row['skipped_perplexity']:>21.2f}  {row['cosine_distance']:>16.4f}"
        )
