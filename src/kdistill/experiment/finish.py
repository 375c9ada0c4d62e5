"""What a finished run leaves: its final files, then its record (written last)."""

from __future__ import annotations

import gzip
import math
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill._version import __version__
from kdistill.compression.callbacks import compression_report, quantization_policy
from kdistill.compression.deploy import metadata
from kdistill.compression.export import export_int8
from kdistill.config.schema import RunConfig
from kdistill.data.text import TextData, token_bytes
from kdistill.engine.checkpoint import Checkpoint
from kdistill.engine.distributed import is_sharded
from kdistill.engine.evaluation import evaluate
from kdistill.engine.trainer import Trainer
from kdistill.experiment.assembly import RunParts, build_eval_loaders
from kdistill.experiment.lm import PROMPTS, greedy_continuation
from kdistill.experiment.loading import build_from_spec
from kdistill.experiment.rundir import run_identity
from kdistill.files import (
    BEST,
    CONFIG,
    INT8_ONNX,
    METRICS,
    MODEL,
    TEACHER,
    atomic_copy,
    sha256_file,
)
from kdistill.models import ModelSpec, count_macs, count_params, cpu_latency_ms, save_model_file
from kdistill.record import RunRecord
from kdistill.trust import CodeTrust

LATENCY_BATCHES = (1, 128)


def finish_run(
    parts: RunParts,
    trainer: Trainer,
    run_dir: Path,
    best: Checkpoint | None,
    *,
    setup_s: float,
    warnings: list[str],
    log: Any,
) -> RunRecord:
    """What a finished run leaves, in three steps: its final files (:func:`save_final_files`:
    the final and best models, a jointly trained teacher), the export of a compressed student
    (:func:`export_compressed`: the int8 ONNX model of a QAT run, and the compression report),
    and last the run record (:func:`write_record`), which lists the checksums of them all.

    ``total_time_s`` counts this process's setup, every epoch (of every session of a resumed
    run) and this finishing step."""
    started = time.perf_counter()
    saved = save_final_files(parts, trainer.student, run_dir, best)
    compression = export_compressed(parts, trainer.student, run_dir, saved, log)
    return write_record(
        parts, trainer, run_dir, saved, compression,
        setup_s=setup_s, finish_started=started, warnings=warnings,
    )  # fmt: skip


@dataclass
class FinalFiles:
    """The files a finished run wrote so far (names in the run directory), the final model's
    size and the spec it records."""

    files: list[str]
    size: int
    spec: ModelSpec


def save_final_files(
    parts: RunParts, student: nn.Module, run_dir: Path, best: Checkpoint | None
) -> FinalFiles:
    """The final model, the best epoch's model and a jointly trained teacher."""
    spec = parts.student_spec(student)
    size = save_model_file(run_dir / MODEL, student.state_dict(), spec)
    files = [CONFIG, METRICS, MODEL]
    if best is not None:
        atomic_copy(best.best_model_file, run_dir / BEST)
        files.append(BEST)
    if parts.teacher is not None and parts.teacher.joint:
        first = parts.teacher.loaded[0]
        save_model_file(run_dir / TEACHER, parts.teacher.network.state_dict(), first.spec)
        files.append(TEACHER)
    return FinalFiles(files, size, spec)


def export_compressed(
    parts: RunParts, student: nn.Module, run_dir: Path, saved: FinalFiles, log: Any
) -> dict[str, Any]:
    """What the compression policies did (the record's ``compression``), with the int8 ONNX
    model of a quantization-aware run converted, checked and added to ``saved.files``."""
    cfg, spec = parts.cfg, saved.spec
    compression = compression_report(parts.compression, student)
    policy = quantization_policy(parts.compression)
    if policy is not None and policy.convert:
        whole_test = build_eval_loaders(cfg, parts.data, parts.device)["test"]
        compression["quantization"].update(
            export_int8(
                student,
                parts.data.input_shape,
                run_dir / INT8_ONNX,
                metadata(
                    spec.to_json(),
                    class_names=spec.class_names,
                    input_shape=spec.input_shape,
                    mean=spec.mean,
                    std=spec.std,
                    source=str(run_dir / MODEL),
                    precision="int8 (converted from quantization-aware training)",
                ),
                lambda predict: (
                    evaluate(
                        predict, whole_test, parts.data.num_classes, across_processes=False
                    ).metrics
                ),
                mean=spec.mean,
                std=spec.std,
            )
        )
        q = compression["quantization"]
        log(
            f"int8 model: {q['onnx_path']} (test top-1 {q['int8_test_top1']:.2%} after conversion "
            f"vs {q['fake_quant_test_top1']:.2%} fake-quantized)"
        )
        saved.files.append(INT8_ONNX)
    if compression:
        compression["description"] = ", ".join(
            p.kind for p in cfg.policies if p.kind != "distillation"
        )
        compression["size_gzip_bytes"] = len(gzip.compress((run_dir / MODEL).read_bytes(), 9))
    return compression


def write_record(
    parts: RunParts,
    trainer: Trainer,
    run_dir: Path,
    saved: FinalFiles,
    compression: dict[str, Any],
    *,
    setup_s: float,
    finish_started: float,
    warnings: list[str],
) -> RunRecord:
    """The run record, written last: what the run was, what it reached, and the checksums of
    every file it left (``total_time_s``: ``setup_s``, the epochs' wall time, and the time
    since finishing began at ``finish_started``, a ``time.perf_counter()``)."""
    cfg, student, state, spec = parts.cfg, trainer.student, trainer.state, saved.spec
    # Size and compute of the architecture itself (an exported QAT graph runs no hooks).
    structure = build_from_spec(spec, trust=CodeTrust(frozenset({spec.arch})), quantized=False).to(
        "cpu"
    )
    history = state.history
    last = history[-1]
    # the best of the epochs with the student's final form (the trainer's rule for "best")
    test_top1 = [h["test"]["top1"] for h in history if h["epoch"] >= cfg.final_form_epoch]
    teachers = ()
    check = parts.teacher_check
    if parts.teacher is not None:
        measured = check.member_top1 if check is not None else ()
        teachers = tuple(
            replace(identity, test_top1=measured[i] if i < len(measured) else None)
            for i, identity in enumerate(parts.teacher.identities)
        )
    record = RunRecord(
        name=cfg.name,
        run_dir=str(run_dir),
        config_hash=run_identity(cfg),
        seed=cfg.train.seed,
        mode="distill" if cfg.kd is not None else "supervised",
        arch=spec.arch,
        dataset=parts.data.name,
        epochs=cfg.train.epochs,
        test_samples=len(parts.data.test),
        test_top1=last["test"]["top1"],
        test_top5=last["test"]["top5"],
        test_loss=last["test"]["loss"],
        test_ece=last["test"]["ece"],
        best_test_top1=max(test_top1),
        best_epoch=state.best_epoch,
        params=count_params(structure),
        macs=count_macs(structure, parts.data.input_shape),
        size_bytes=saved.size,
        epoch_times_s=tuple(state.epoch_times),
        total_time_s=setup_s + state.wall_time_s + time.perf_counter() - finish_started,
        kdistill_version=__version__,
        torch_version=torch.__version__,
        git_sha=git_sha(),
        val_top1=last["val"]["top1"] if "val" in last else None,
        test_top1_at_best_val=history[state.best_epoch]["test"]["top1"] if "val" in last else None,
        test_agreement=last["test"].get("agreement"),
        teachers=teachers,
        methods=_methods(cfg),
        teacher_test_top1=check.test_top1 if check is not None else None,
        teacher_cache=str(parts.cache.path) if parts.cache is not None else None,
        kd_gradient_ratio=parts.kd_gradient_ratio,
        threads=f"{parts.threads.threads} ({parts.threads.reason})" if parts.threads else None,
        data_pipeline=f"{parts.data.pipeline} ({parts.data.pipeline_reason})",
        teacher_precision=parts.teacher.precision.describe()
        if parts.teacher is not None and parts.teacher.precision is not None
        else None,
        warnings=tuple(warnings),
        cpu_latency_ms=latency(student, parts.data.input_shape)
        if cfg.train.measure_latency
        else None,
        compression=compression or None,
        **language_model_metrics(parts, last, state.epoch_times, student),
        files={name: sha256_file(run_dir / name) for name in saved.files},
    )
    record.write(run_dir)
    return record


# tokens of each greedy continuation in a language model's record (and so in the report)
CONTINUATION_TOKENS = 24


def language_model_metrics(
    parts: RunParts, last: dict[str, Any], epoch_times: list[float], student: nn.Module
) -> dict[str, Any]:
    """A language model's record fields: test perplexity, bits per byte (the test labels'
    negative log-likelihood in bits over the UTF-8 bytes they stand for, comparable across
    tokenizers), the tokens they average over, the teacher's perplexity and bits per byte on the
    same tokens, tokens per second, and the student's and the teacher's greedy continuations of
    a few fixed prompts."""
    data = parts.data
    if not isinstance(data, TextData):
        return {}
    models = {"student": student}
    teacher = parts.teacher.loaded[0].model if parts.teacher is not None else None
    # a sharded teacher runs only with every process (which has left): no continuations
    if teacher is not None and not parts.teacher.joint and not is_sharded(teacher):  # type: ignore[union-attr]
        models["teacher"] = teacher
    own = parts.teacher.loaded[0].tokenizer if parts.teacher is not None else None
    tokenizers = {"student": data.tokenizer, "teacher": own or data.tokenizer}
    continuations = {
        role: {p: greedy_continuation(m, tokenizers[role], p, CONTINUATION_TOKENS) for p in PROMPTS}
        for role, m in models.items()
    }
    test = data.test
    tokens = test.tokens_with_loss()
    text_bytes = test.label_bytes(token_bytes(data.tokenizer))
    check = parts.teacher_check
    trained = data.train.tokens_with_loss() * len(epoch_times)
    generation = getattr(parts.objective, "generation_stats", None)  # on-policy distillation

    def bits_per_byte(mean_nll: float) -> float:
        return mean_nll * tokens / (math.log(2) * max(1, text_bytes))

    return {
        "test_perplexity": last["test"]["perplexity"],
        "test_bits_per_byte": bits_per_byte(last["test"]["loss"]),
        "test_tokens": tokens,
        "teacher_test_perplexity": check.test.metrics.get("perplexity") if check else None,
        # a teacher of another tokenizer measured its own bits per byte (its own tokens)
        "teacher_test_bits_per_byte": (
            check.test.metrics.get("bits_per_byte", bits_per_byte(check.test.metrics["loss"]))
            if check
            else None
        ),
        "tokens_per_s": trained / max(1e-9, sum(epoch_times)),
        "continuations": continuations,
        "generation": generation() if callable(generation) else None,
        "alignment": parts.alignment,
    }


def git_sha() -> str | None:
    """The commit of the kdistill source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_record(record: RunRecord) -> str:
    """One line for the console."""
    if record.test_perplexity is not None:  # a language model
        line = (
            f"{record.run_dir}: test perplexity {record.test_perplexity:.2f}, "
            f"{record.test_bits_per_byte:.3f} bits per byte ({record.test_tokens:,} tokens), "
            f"{record.params:,} params, {record.total_time_s:.1f}s"
        )
        if record.teacher_test_perplexity is not None:
            line += f"; teacher {record.teacher_test_perplexity:.2f}"
            if record.teacher_test_bits_per_byte is not None:
                line += f" ({record.teacher_test_bits_per_byte:.3f} bits per byte)"
        if record.generation and record.generation.get("on_policy_batches"):
            g = record.generation
            line += (
                f"; {int(g['on_policy_batches'])} on-policy batches, "
                f"{int(g['generated_tokens']):,} tokens generated at "
                f"{g['generation_tokens_per_s']:,.0f}/s (training {record.tokens_per_s:,.0f}/s)"
            )
        return line
    line = (
        f"{record.run_dir}: test top-1 {record.test_top1:.2%} (best {record.best_test_top1:.2%}), "
        f"{record.params:,} params, {record.total_time_s:.1f}s"
    )
    if record.teacher_test_top1 is not None:
        line += f"; teacher {record.teacher_test_top1:.2%}"
    return line


def _methods(cfg: RunConfig) -> tuple[str, ...]:
    """The distillation methods of the run (``("kd",)`` for Hinton's loss alone)."""
    if cfg.kd is None:
        return ()
    return tuple(m.name for m in cfg.kd.methods) or ("kd",)


def latency(student: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``batch_N`` (median ms) and ``batch_N_iqr`` for each of ``LATENCY_BATCHES``."""
    out: dict[str, float] = {}
    for b in LATENCY_BATCHES:
        measured = cpu_latency_ms(student, input_shape, b)
        out[f"batch_{b}"] = measured["median"]
        out[f"batch_{b}_iqr"] = measured["iqr"]
    return out
