"""The frozen teacher's test check, remembered beside its output cache.

Before a teacher may teach, kdistill evaluates it on the test split (its accuracy, and its
predictions for the student's agreement with it). A run that reads a teacher cache does not
otherwise run the teacher, and that evaluation was most of its start-up (2.8 s of 3.7 s for a
ResNet-18 on Fashion-MNIST's 10,000 test images). So the check is kept in the cache directory,
under a key of everything that determines it: the cache's fingerprint (the teachers' weights,
their precision, input transforms and BN policy, the normalization), the test split's bytes
(samples, labels, ids), the ensemble's merge, the evaluation batch size, the device kind and the
torch version. The file carries a checksum of its content; one that does not check out, or
whose key or size differs, is not used (the teacher is evaluated again and the file rewritten).
The refusal of a weak teacher (``kd.min_teacher_top1``) applies to a remembered check as to a
measured one.

Data-parallel runs evaluate as before: each process holds only its share of the predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdistill.cache import fingerprint
from kdistill.cache.fingerprint import array_digest
from kdistill.config.schema import RunConfig
from kdistill.data import DataBundle, ImageFiles
from kdistill.engine.evaluation import Evaluation
from kdistill.experiment.teacher_cache import CachePlan
from kdistill.experiment.teachers import TeacherCheck
from kdistill.files import (
    ArtifactError,
    atomic_write_text,
    canonical_json,
    read_json,
    sha256_bytes,
    teacher_check_file,
)

MEMO_FORMAT = 1


@dataclass(frozen=True)
class CheckMemo:
    """Where a teacher check is remembered and under which key."""

    plan: CachePlan
    key: str

    @property
    def path(self) -> Path:
        return self.plan.path / teacher_check_file(self.key)


def check_memo(
    cfg: RunConfig, plan: CachePlan, data: DataBundle, device: torch.device
) -> CheckMemo:
    """The memo of the teacher check of a run of ``cfg`` reading the cache ``plan``."""
    kd = cfg.kd
    assert kd is not None
    test = data.test
    images = test.images
    description: dict[str, Any] = {
        "format": MEMO_FORMAT,
        "cache": plan.fingerprint,
        "test": {
            "samples": len(test),
            "images": images.digest() if isinstance(images, ImageFiles) else array_digest(images),
            "labels": array_digest(test.labels),
            "ids": array_digest(test.ids),
        },
        "ensemble": {
            "reduce": kd.ensemble_reduce,
            "weights": kd.ensemble_weights,
            "temperature": kd.temperature,
        },
        "eval_batch_size": cfg.data.eval_batch_size,
        "device": device.type,
        "torch": torch.__version__,
    }
    return CheckMemo(plan, fingerprint(description))


def recall_check(memo: CheckMemo, test_samples: int) -> tuple[TeacherCheck | None, str | None]:
    """The remembered check, or ``None`` and why it cannot be used (``None`` when there is
    simply none yet)."""
    if not memo.plan.finished or not memo.path.is_file():
        return None, None
    try:
        saved = read_json(memo.path, "remembered teacher check")
    except ArtifactError as e:
        return None, str(e)
    if not isinstance(saved, dict) or not isinstance(saved.get("content"), dict):
        return None, f"{memo.path} is not a teacher check"
    content = saved["content"]
    if sha256_bytes(canonical_json(content).encode()) != saved.get("sha256"):
        return None, f"{memo.path} does not match its checksum"
    if content.get("key") != memo.key or len(content.get("predictions", ())) != test_samples:
        return None, f"{memo.path} is of another check"
    try:
        test = Evaluation(
            {k: float(v) for k, v in content["metrics"].items()},
            torch.tensor(content["predictions"], dtype=torch.int64),
        )
        members = tuple(float(v) for v in content["member_top1"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, f"{memo.path} is not a teacher check"
    return TeacherCheck(test.metrics["top1"], members, test), None


def remember_check(memo: CheckMemo, check: TeacherCheck) -> str | None:
    """Keep ``check`` in the cache directory (atomically, with its checksum); returns why it
    was not kept (a metric that JSON cannot hold, a directory this process cannot write), or
    ``None``. Not keeping it only means the next run evaluates the teacher again."""
    metrics = dict(check.test.metrics)
    if not all(math.isfinite(v) for v in [*metrics.values(), *check.member_top1]):
        return f"a metric is not finite ({metrics})"
    content = {
        "key": memo.key,
        "metrics": metrics,
        "member_top1": list(check.member_top1),
        "predictions": check.test.predictions.tolist(),
    }
    saved = {"sha256": sha256_bytes(canonical_json(content).encode()), "content": content}
    try:
        atomic_write_text(memo.path, canonical_json(saved) + "\n")
    except (ArtifactError, OSError) as e:
        return str(e)
    return None
