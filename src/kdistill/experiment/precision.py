"""``kd.teacher_precision: auto``: the frozen teacher's precision, chosen for this hardware.

bf16 is no free lunch: on a CPU with bf16 units (AMX, AVX-512 BF16) it ran a ResNet 2.4-3x
faster than fp32, on a Xeon without them 2.4x *slower* (emulated). So ``auto`` takes bf16 only
where the device computes it natively *and* a short probe (the teacher's own forward pass,
timed in both precisions on this device) confirms that it is faster; otherwise fp32. The choice
and its reason are logged and kept in the run record; a resumed run keeps the precision it
began with, so one run never mixes them.
"""

from __future__ import annotations

import math
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
# The probe's batch: about a million input values (AMX gains grow with the batch, so a tiny
# batch understates them), from 8 images at ImageNet size up to 128 small ones.
PROBE_VALUES = 2**20
PROBE_REPEATS = 5

Probe = Callable[[], tuple[float, float]]
"""``() -> (fp32 seconds, bf16 seconds)`` of one teacher forward pass on a probe batch."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The teacher's precision and why (one line for the log and the run record).

    ``automatic``: chosen by ``auto`` for this run just now (not asked for, not kept from the
    run's start), so it may follow a teacher cache that holds the other precision."""

    precision: str
    reason: str
    automatic: bool = False

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


def probe_batch(input_shape: Sequence[int]) -> int:
    """Images per probe pass for inputs of ``input_shape``: a power of two in 8..128."""
    values = max(1, math.prod(input_shape))
    return 2 ** min(7, max(3, int(math.log2(max(1, PROBE_VALUES // values)))))


def forward_probe(
    members: Sequence[FrozenTeacher],
    input_shape: Sequence[int],
    device: torch.device,
    *,
    inputs: torch.Tensor | None = None,
) -> Probe:
    """A probe that times the frozen ``members`` (each with its input adapter) on a random
    batch of the data's shape (or on ``inputs``: a language model's token ids): a warm-up pass
    in each precision, then :data:`PROBE_REPEATS` rounds that alternate them (so that the
    machine's drift hits both alike); the medians."""
    x = (
        inputs
        if inputs is not None
        else torch.randn(
            probe_batch(input_shape), *input_shape, generator=torch.Generator().manual_seed(0)
        )
    ).to(device)

    def one_pass(dtype: torch.dtype | None) -> float:
        for m in members:
            m.dtype = dtype
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for m in members:
            m(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    def probe() -> tuple[float, float]:
        before = [m.dtype for m in members]
        try:
            one_pass(None), one_pass(torch.bfloat16)  # warm-up: allocations, kernel choice
            rounds = [(one_pass(None), one_pass(torch.bfloat16)) for _ in range(PROBE_REPEATS)]
        finally:
            for m, dtype in zip(members, before, strict=True):
                m.dtype = dtype
        return (
            statistics.median(fp32 for fp32, _ in rounds),
            statistics.median(bf16 for _, bf16 in rounds),
        )

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
        probe: times a teacher forward pass in fp32 and in bf16 (only called for ``auto`` on
            a device with native bf16).
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
            "fp32",
            f"auto: {device.type} has no native bf16 ({units}), where bf16 is slower",
            automatic=True,
        )
    fp32_s, bf16_s = probe()
    timing = f"a forward pass took {bf16_s * 1e3:.1f} ms in bf16, {fp32_s * 1e3:.1f} ms in fp32"
    if bf16_s < PROBE_MARGIN * fp32_s:
        return PrecisionChoice("bf16", f"auto: {why} and {timing}", automatic=True)
    return PrecisionChoice("fp32", f"auto: {why}, but {timing}", automatic=True)


__all__ = [
    "TEACHER_DTYPES",
    "PrecisionChoice",
    "choose_teacher_precision",
    "forward_probe",
    "native_bf16",
]
