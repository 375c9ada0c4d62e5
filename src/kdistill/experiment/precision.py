"""``kd.teacher_precision: auto``: the frozen teacher's precision, chosen for this hardware.

bf16 is no free lunch: on a CPU with bf16 units (AMX, AVX-512 BF16) it ran a ResNet 2.4-3x
faster than fp32, on a Xeon without them 2.4x *slower* (emulated). So ``auto`` takes bf16 only
where the device computes it natively *and* a short probe (the teacher's own forward pass,
timed in both precisions on this device) confirms that it is faster; otherwise fp32. The choice
and its reason are logged and kept in the run record; a resumed run keeps the precision it
began with, so one run never mixes them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kdistill.hardware import NATIVE_BF16_FLAGS, native_bf16_flag
from kdistill.teachers import FrozenTeacher

TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 must take at most this fraction of fp32's time in the probe (1.25x faster): a small gain
# is not worth the rounding, and a clear margin keeps timing noise from flipping the choice
# between runs (the precision is part of a teacher cache's key: a flip would rebuild it). Where
# bf16 is native the gain is large (2.4-3x measured for CNN teachers on AMX).
PROBE_MARGIN = 0.8
PROBE_BATCH = 16
PROBE_REPEATS = 3

Probe = Callable[[str], float]
"""``precision -> seconds`` of one teacher forward pass on a probe batch (median of repeats)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The teacher's precision and why (one line for the log and the run record)."""

    precision: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return TEACHER_DTYPES[self.precision]

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


def native_bf16(device: torch.device) -> str | None:
    """Why ``device`` computes bf16 natively (a CPU flag, or the GPU's support), or ``None``."""
    if device.type == "cuda":
        return "the GPU supports bf16" if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        flag = native_bf16_flag()
        return None if flag is None else f"the CPU has {flag}"
    return None


def forward_probe(
    members: Sequence[FrozenTeacher], input_shape: Sequence[int], device: torch.device
) -> Probe:
    """A probe that times the frozen ``members`` (each with its input adapter) on a random
    batch of the data's shape: one warm-up pass, then the median of :data:`PROBE_REPEATS`."""
    x = torch.randn(PROBE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def probe(precision: str) -> float:
        before = [m.dtype for m in members]
        times = []
        try:
            for m in members:
                m.dtype = TEACHER_DTYPES[precision]
            for i in range(PROBE_REPEATS + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                for m in members:
                    m(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i:  # the first pass warms up (allocations, kernel selection)
                    times.append(time.perf_counter() - started)
        finally:
            for m, dtype in zip(members, before, strict=True):
                m.dtype = dtype
        return statistics.median(times)

    return probe


def choose_teacher_precision(
    requested: str,
    device: torch.device,
    probe: Probe,
    *,
    recorded: str | None = None,
    native: str | bool | None = True,
) -> PrecisionChoice:
    """The precision the frozen teacher runs in.

    Args:
        requested: ``kd.teacher_precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``).
        device: where the teacher runs.
        probe: times a teacher forward pass in a precision (only called for ``auto`` on a
            device with native bf16).
        recorded: the precision an interrupted run began with (a resume keeps it).
        native: why the device computes bf16 natively, or ``None`` when it does not;
            ``True`` = ask the device (:func:`native_bf16`).
    """
    if requested != "auto":
        return PrecisionChoice(requested, "asked for")
    if recorded is not None:
        return PrecisionChoice(recorded, "auto, chosen when this run began")
    why = native_bf16(device) if native is True else native
    if why is None:
        units = ", ".join(NATIVE_BF16_FLAGS) if device.type == "cpu" else "bf16 support"
        return PrecisionChoice(
            "fp32", f"auto: {device.type} has no native bf16 ({units}), where bf16 is slower"
        )
    fp32_s, bf16_s = probe("fp32"), probe("bf16")
    timing = f"a forward pass took {bf16_s * 1e3:.1f} ms in bf16, {fp32_s * 1e3:.1f} ms in fp32"
    if bf16_s < PROBE_MARGIN * fp32_s:
        return PrecisionChoice("bf16", f"auto: {why} and {timing}")
    return PrecisionChoice("fp32", f"auto: {why}, but {timing}")


__all__ = [
    "TEACHER_DTYPES",
    "PrecisionChoice",
    "choose_teacher_precision",
    "forward_probe",
    "native_bf16",
]
