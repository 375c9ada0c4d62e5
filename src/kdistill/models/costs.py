"""Model size and compute: parameters, non-zero parameters, multiply-accumulates per sample."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def sample_input(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """A batch the model takes: zeros of ``input_shape``, or token id 0 at every position of
    a language model's ``(context,)`` sequences."""
    if getattr(model, "vocab_size", None) is not None and len(input_shape) == 1:
        return torch.zeros(batch, *input_shape, dtype=torch.long, device=device)
    return torch.zeros(batch, *input_shape, device=device)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample, counting Conv and Linear layers
    (the rest is negligible for the networks here)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.inference_mode():
            model(sample_input(model, input_shape, 1, device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def cpu_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    budget_s: float = 0.5,
    min_reps: int = 15,
    max_reps: int = 500,
) -> dict[str, float]:
    """Wall time (ms) of one inference forward pass of a batch on the CPU: the median over
    repetitions, with the interquartile range as its spread.

    Three warm-up passes first (allocations, lazy initialization, caches); then passes until
    ``budget_s`` has been spent and at least ``min_reps`` were timed (at most ``max_reps``), so
    a 0.1 ms model gets hundreds of samples and a slow one its minimum. Timing on a shared
    machine is noisy: compare values from the same run, and read the spread.

    Returns:
        ``{"median": ms, "iqr": ms, "reps": n}``.
    """
    import copy
    import statistics
    import time

    cpu_model = copy.deepcopy(model).to("cpu").eval()
    x = (
        torch.randn(batch_size, *input_shape)
        if getattr(model, "vocab_size", None) is None
        else sample_input(model, input_shape, batch_size)
    )
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(3):
            cpu_model(x)
        started = time.perf_counter()
        while len(times) < max_reps and (
            len(times) < min_reps or time.perf_counter() - started < budget_s
        ):
            t0 = time.perf_counter()
            cpu_model(x)
            times.append((time.perf_counter() - t0) * 1000)
    quartiles = statistics.quantiles(times, n=4)
    return {
        "median": statistics.median(times),
        "iqr": quartiles[2] - quartiles[0],
        "reps": float(len(times)),
    }
