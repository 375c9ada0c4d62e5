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
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def cpu_latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, reps: int = 5
) -> float:
    """Median wall time (ms) of one inference forward pass of a batch on the CPU, after one
    warm-up pass. Timing on a shared machine is noisy: compare values from the same run."""
    import copy
    import statistics
    import time

    cpu_model = copy.deepcopy(model).to("cpu").eval()
    x = torch.randn(batch_size, *input_shape)
    times = []
    with torch.inference_mode():
        cpu_model(x)
        for _ in range(reps):
            started = time.perf_counter()
            cpu_model(x)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
