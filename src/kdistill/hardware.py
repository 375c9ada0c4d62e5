"""What this machine offers a run: how many CPU threads to use, read from the machine itself.

PyTorch's default takes one thread per core whatever else runs. On a machine kept busy by other
processes that oversubscribes the cores, and PyTorch's threads then wait on each other at every
parallel region: on a busy 2-core machine the demo took 119-312 s with 2 threads and 14 s with 1.
:func:`choose_threads` therefore counts the cores this process may use, the physical cores among
them and how many are busy with other processes right now, and says why it chose what it chose.
Torch-free, like the rest of the foundation: the caller applies the choice.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadChoice:
    """How many threads, and why (one line for the log and the run record)."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity, which containers and
    ``taskset`` narrow)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int], cpuinfo: str | None = None) -> int:
    """How many physical cores ``cpus`` span (hyper-threads of one core count once); the
    number of CPUs where ``/proc/cpuinfo`` does not say."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return len(cpus)
    cores: dict[int, tuple[str, str]] = {}
    for block in cpuinfo.strip().split("\n\n"):
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if "processor" in fields and fields["processor"].isdigit():
            cores[int(fields["processor"])] = (
                fields.get("physical id", "0"),
                fields.get("core id", fields["processor"]),
            )
    wanted = [cores[c] for c in cpus if c in cores]
    return len(set(wanted)) if len(wanted) == len(cpus) else len(cpus)


def busy_cpus(samples: int = 5, interval_s: float = 0.01, loadavg: str | None = None) -> int:
    """How many CPUs other processes keep busy right now: the runnable tasks the kernel
    reports (``/proc/loadavg``'s fourth field, which counts this process too), the median of
    a few samples so that a momentary blip does not count."""
    counts = []
    for i in range(samples if loadavg is None else 1):
        try:
            text = loadavg if loadavg is not None else Path("/proc/loadavg").read_text()
            running = int(text.split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        counts.append(max(0, running - 1))
        if loadavg is None and i + 1 < samples:
            time.sleep(interval_s)
    return sorted(counts)[len(counts) // 2]


def choose_threads(
    requested: int | None = None,
    *,
    share: int = 1,
    cpus: list[int] | None = None,
    cores: int | None = None,
    busy: int | None = None,
) -> ThreadChoice:
    """The threads for one run among ``share`` running at once on this machine (processes of
    a data-parallel run, workers of a sweep).

    ``requested`` (``--threads`` / ``train.threads``) wins, up to the CPUs this process may
    use (more threads than CPUs only wait on each other: ``--threads 999`` on 2 CPUs made an
    epoch 50x slower). Otherwise: one thread per physical core this process may use, divided
    among the ``share`` runs, and no more than the CPUs other processes leave free, at least one.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"threads must be >= 1, got {requested}")
    cpus = usable_cpus() if cpus is None else cpus
    if requested is not None:
        if requested > len(cpus):
            return ThreadChoice(
                len(cpus), f"asked for {requested}, capped at the {len(cpus)} CPUs of this process"
            )
        return ThreadChoice(requested, "asked for")
    cores = physical_cores(cpus) if cores is None else cores
    busy = busy_cpus() if busy is None else busy
    per_run = max(1, cores // share)
    parts = [f"{cores} physical core{'s' if cores != 1 else ''} of {len(cpus)} CPUs"]
    if share > 1:
        parts.append(f"shared by {share} runs")
    threads = per_run
    if busy > 0:
        free = max(1, (len(cpus) - busy) // share)
        threads = min(per_run, free)
        parts.append(f"{busy} busy with other processes")
    return ThreadChoice(threads, ", ".join(parts))


def total_memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or its container's limit (cgroup v2 or
    v1) when that is smaller; ``None`` when neither can be read."""
    sizes = []
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    return min(sizes) if sizes else None


def choose_workers(requested: int | None, threads: int, cores: int | None = None) -> int:
    """DataLoader worker processes for the streaming pipeline: ``requested`` when given, else
    one per physical core the ``threads`` training threads leave free, at least one."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"workers must be >= 0, got {requested}")
        return requested
    cores = physical_cores(usable_cpus()) if cores is None else cores
    return max(1, cores - threads)


# CPU flags (``/proc/cpuinfo``) of units that compute bf16 natively: AMX tiles and AVX-512
# BF16 on x86, the BF16 extension on Arm. Without them bf16 is emulated, and was measured 2.4x
# slower than fp32 on a Xeon with AVX-512 but no bf16 units.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def native_bf16_flag(cpuinfo: str | None = None) -> str | None:
    """The flag by which this CPU says it computes bf16 natively, or ``None``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)
