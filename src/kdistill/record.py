"""The run record: ``summary.json``, typed, checksummed, and the only thing reports read.

A run writes its record last, after every other file; the record lists the sha256 of those
files and carries a checksum of its own content, so a record that exists means a finished run,
and an edited or corrupted record or file is caught when it is read. Records written before
schema version 2 (untyped summaries without checksums) still load, marked ``legacy``.

This module imports nothing of kdistill's but :mod:`kdistill.files` and never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.files import (
    RECORD,
    ArtifactError,
    atomic_write_text,
    canonical_json,
    jsonable,
    read_json,
    sha256_bytes,
    verify_file,
)

RECORD_SCHEMA_VERSION = 2
_CHECKSUM = "record_sha256"


@dataclass(frozen=True)
class TeacherIdentity:
    """Which weights taught a run.

    Attributes:
        reference: the teacher as the config names it (``runs/x-teacher`` or a file).
        file: the model file it resolved to (absolute path at training time).
        sha256: sha256 of that file's bytes: the teacher's identity.
        arch: its architecture.
        test_top1: its accuracy on this run's test split (``None`` when trained jointly).
        run_dir: the teacher's own run directory, when the reference is a finished run.
        record_test_top1: the test top-1 its own run record states.
    """

    reference: str
    file: str
    sha256: str
    arch: str
    test_top1: float | None = None
    run_dir: str | None = None
    record_test_top1: float | None = None

    def describe(self) -> str:
        return f"{self.reference} -> {self.file} (sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class RunRecord:
    """What a finished run did and produced.

    Attributes (the main ones): ``name``, ``run_dir``, ``config_hash`` (the run's identity,
    without seed and output directory), ``seed``, ``mode`` (``distill`` or ``supervised``),
    ``arch``, ``dataset``; the final test metrics ``test_top1``/``test_top5``/``test_loss``/
    ``test_ece``; ``best_test_top1`` and ``best_epoch`` (chosen on val when there is a val
    split, among the epochs after the last compression step); model size and cost
    (``params``, ``macs``, ``size_bytes``); times; versions; the ``teachers`` that taught it
    with their identities; warnings of the health checks; the compression report; and
    ``files``: the sha256 of every file of the run directory that kdistill trusts later.
    """

    name: str
    run_dir: str
    config_hash: str
    seed: int
    mode: str
    arch: str
    dataset: str
    epochs: int
    test_samples: int
    test_top1: float
    test_top5: float
    test_loss: float
    test_ece: float
    best_test_top1: float
    best_epoch: int
    params: int
    macs: int
    size_bytes: int
    epoch_times_s: tuple[float, ...]
    total_time_s: float
    kdistill_version: str
    torch_version: str
    git_sha: str | None = None
    val_top1: float | None = None
    test_top1_at_best_val: float | None = None
    test_agreement: float | None = None
    teachers: tuple[TeacherIdentity, ...] = ()
    methods: tuple[str, ...] = ()
    teacher_test_top1: float | None = None
    teacher_cache: str | None = None
    kd_gradient_ratio: float | None = None
    warnings: tuple[str, ...] = ()
    cpu_latency_ms: dict[str, Any] | None = None
    threads: str | None = None
    data_pipeline: str | None = None
    teacher_precision: str | None = None
    compression: dict[str, Any] | None = None
    # language models: the test split's perplexity, bits per byte (tokenizer-independent), the
    # tokens they average over, the teacher's perplexity and bits per byte on the same tokens,
    # and training throughput
    test_perplexity: float | None = None
    test_bits_per_byte: float | None = None
    test_tokens: int | None = None
    teacher_test_perplexity: float | None = None
    teacher_test_bits_per_byte: float | None = None
    tokens_per_s: float | None = None
    # greedy continuations of a few fixed prompts: {"student": {prompt: text}, "teacher": ...}
    continuations: dict[str, dict[str, str]] | None = None
    # on-policy distillation: the batches of the student's own samples, the tokens it
    # generated and how fast (generation_tokens_per_s, beside tokens_per_s)
    generation: dict[str, float] | None = None
    # a teacher of another tokenizer: the share of the student's positions aligned with a
    # teacher position, teacher tokens per student token, over the first training blocks
    alignment: dict[str, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = RECORD_SCHEMA_VERSION

    @property
    def legacy(self) -> bool:
        """Written by a kdistill before records had checksums: its files cannot be checked."""
        return self.schema_version < RECORD_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, key: str, default: Any = None) -> Any:
        """A field by name (reports and sweeps select metrics by name)."""
        return getattr(self, key, default)

    # ------------------------------------------------------------------ writing

    def write(self, run_dir: str | Path) -> Path:
        """Write ``summary.json`` atomically, with the checksum of its content."""
        data = jsonable(self.to_dict())
        data[_CHECKSUM] = sha256_bytes(canonical_json(data).encode())
        path = Path(run_dir) / RECORD
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path

    # ------------------------------------------------------------------ reading

    @classmethod
    def read(cls, run_dir: str | Path, *, verify_files: bool = True) -> RunRecord:
        """The record of a finished run directory (or a ``summary.json`` path), checked.

        Raises:
            ArtifactError: missing, torn, edited or corrupted record; with ``verify_files``,
                a file the record lists that is missing or differs from its recorded sha256.
        """
        p = Path(run_dir)
        path = p if p.name == RECORD else p / RECORD
        if not path.is_file():
            raise ArtifactError(
                f"{path.parent} has no run record ({RECORD}): it is not a finished kdistill run "
                "(an interrupted one can be continued with --resume)"
            )
        data = read_json(path, "run record")
        record = cls.from_dict(data, str(path))
        if verify_files:
            record.verify_files(path.parent)
        return record

    @classmethod
    def from_dict(cls, data: Any, where: str) -> RunRecord:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"run record {where} must hold a JSON object")
        data = dict(data)
        version = data.get("schema_version", 1)
        if version == 1:
            return cls._from_legacy(data, where)
        if version != RECORD_SCHEMA_VERSION:
            raise ArtifactError(
                f"run record {where} has schema version {version!r}; this kdistill reads "
                f"{RECORD_SCHEMA_VERSION} (and older records): upgrade kdistill to read it"
            )
        stated = data.pop(_CHECKSUM, None)
        if stated != sha256_bytes(canonical_json(data).encode()):
            raise ArtifactError(
                f"run record {where} was edited or corrupted after kdistill wrote it (its "
                "checksum does not match its content); its numbers cannot be trusted. Train the "
                "run again (--force) or restore the file"
            )
        return cls._build(data, where)

    @classmethod
    def _build(cls, data: dict[str, Any], where: str) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        )
        problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
        if problems:
            raise ArtifactError(
                f"run record {where} does not fit this kdistill: {'; '.join(problems)}"
            )
        try:
            data["epoch_times_s"] = tuple(data["epoch_times_s"])
            data["warnings"] = tuple(data.get("warnings") or ())
            data["methods"] = tuple(data.get("methods") or ())
            data["teachers"] = tuple(TeacherIdentity(**t) for t in data.get("teachers") or ())
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"run record {where} has a malformed field ({e})") from None

    @classmethod
    def _from_legacy(cls, data: dict[str, Any], where: str) -> RunRecord:
        """A summary of schema 1 (before checksums): same metrics, teachers as plain entries."""
        resolved = data.pop("teacher_checkpoints_resolved", None) or []
        data.pop("teacher_checkpoints", None)
        teachers = []
        for i, t in enumerate(data.pop("teachers", None) or []):
            file = resolved[i] if i < len(resolved) else t.get("checkpoint", "")
            teachers.append(
                {
                    "reference": t.get("checkpoint", ""),
                    "file": file,
                    "sha256": "",
                    "arch": t.get("arch", ""),
                    "test_top1": t.get("test_top1"),
                }
            )
        data["teachers"] = teachers
        data.setdefault("test_loss", float("nan"))
        data.setdefault("test_ece", float("nan"))
        data.setdefault("kdistill_version", "unknown")
        data.setdefault("torch_version", "unknown")
        data["schema_version"] = 1
        data["files"] = {}
        return cls._build(data, where)

    def verify_files(self, run_dir: str | Path) -> None:
        """Check every file the record lists against its recorded sha256."""
        for name, digest in self.files.items():
            verify_file(
                Path(run_dir) / name,
                digest,
                f"file of the run {run_dir}:",
                "train the run again (--force) or restore the file",
            )
