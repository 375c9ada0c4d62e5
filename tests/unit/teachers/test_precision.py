"""kd.teacher_precision: auto takes bf16 only where it is native and measured faster."""

import torch
from torch import nn

from kdistill.experiment.precision import choose_teacher_precision, forward_probe
from kdistill.teachers import FrozenTeacher

CPU = torch.device("cpu")


def timings(fp32, bf16):
    calls = []

    def probe():
        calls.append("probe")
        return fp32, bf16

    return probe, calls


def test_an_explicit_precision_is_kept_without_probing():
    probe, calls = timings(fp32=1.0, bf16=0.1)
    for asked in ("fp32", "bf16", "fp16"):
        choice = choose_teacher_precision(asked, CPU, probe, native="the CPU has amx_bf16")
        assert (choice.precision, choice.reason) == (asked, "asked for")
        assert not choice.automatic  # fixed: never follows a cache of another precision
    assert calls == []


def test_auto_is_fp32_without_native_bf16_and_does_not_probe():
    probe, calls = timings(fp32=1.0, bf16=0.1)
    choice = choose_teacher_precision("auto", CPU, probe, native=None)
    assert choice.precision == "fp32" and choice.dtype is None
    assert "no native bf16 (amx_bf16, avx512_bf16, bf16)" in choice.reason
    assert calls == []


def test_auto_takes_bf16_only_when_the_probe_finds_it_faster():
    fast, _ = timings(fp32=0.030, bf16=0.012)
    choice = choose_teacher_precision("auto", CPU, fast, native="the CPU has amx_bf16")
    assert choice.precision == "bf16" and choice.dtype is torch.bfloat16 and choice.automatic
    assert choice.describe() == (
        "bf16 (auto: the CPU has amx_bf16 and a forward pass took 12.0 ms in bf16, 30.0 ms in fp32)"
    )
    tie, _ = timings(fp32=0.030, bf16=0.029)  # within the margin: not worth the rounding
    choice = choose_teacher_precision("auto", CPU, tie, native="the CPU has amx_bf16")
    assert choice.precision == "fp32" and "but a forward pass took 29.0 ms in bf16" in choice.reason


def test_a_resumed_run_keeps_the_precision_it_began_with():
    probe, calls = timings(fp32=1.0, bf16=0.1)
    choice = choose_teacher_precision("auto", CPU, probe, recorded="fp32", native="x")
    assert choice.precision == "fp32" and "when this run began" in choice.reason
    assert not choice.automatic
    assert calls == []


def test_the_probe_times_the_teacher_in_each_precision_and_restores_it():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            )
            return x.flatten(1)[:, :3]

    member = FrozenTeacher(Spy())
    member.dtype = torch.float16
    probe = forward_probe([member], (1, 4, 4), CPU)
    fp32, bf16 = probe()
    assert fp32 >= 0 and bf16 >= 0
    # a warm-up pass in each precision, then five rounds that alternate them
    assert seen == [None, torch.bfloat16] * 6
    assert member.dtype is torch.float16  # restored
