"""Thread choice from the machine's cores and load (on described machines, not this one)."""

import pytest

from kdistill.hardware import busy_cpus, choose_threads, physical_cores

# Two physical cores with two hyper-threads each.
CPUINFO = "\n\n".join(
    f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p % 2}\nflags\t\t: fpu" for p in range(4)
)


def test_physical_cores_count_hyper_threads_once():
    assert physical_cores([0, 1, 2, 3], CPUINFO) == 2
    assert physical_cores([0], CPUINFO) == 1
    assert physical_cores([0, 1, 7], CPUINFO) == 3  # a CPU it does not describe: count CPUs


def test_busy_cpus_leave_this_process_out():
    assert busy_cpus(loadavg="0.50 0.40 0.30 1/300 1234") == 0
    assert busy_cpus(loadavg="2.10 2.00 1.90 3/300 1234") == 2
    assert busy_cpus(loadavg="garbage") == 0


@pytest.mark.parametrize(
    ("kwargs", "threads", "says"),
    [
        ({"cpus": [0, 1, 2, 3], "cores": 2, "busy": 0}, 2, "2 physical cores of 4 CPUs"),
        ({"cpus": [0, 1], "cores": 2, "busy": 2}, 1, "2 busy with other processes"),
        ({"cpus": [0, 1], "cores": 2, "busy": 1}, 1, "1 busy"),
        ({"cpus": list(range(16)), "cores": 8, "busy": 0, "share": 4}, 2, "shared by 4 runs"),
        ({"cpus": [0, 1], "cores": 2, "busy": 0, "share": 3}, 1, "shared by 3 runs"),
        ({"requested": 2, "cpus": [0, 1], "cores": 2, "busy": 2}, 2, "asked for"),
        ({"requested": 999, "cpus": [0, 1], "cores": 2, "busy": 0}, 2, "capped at the 2 CPUs"),
    ],
)
def test_choose_threads(kwargs, threads, says):
    choice = choose_threads(**kwargs)
    assert choice.threads == threads and says in choice.reason
    assert choice.describe().startswith(f"threads: {threads} (")


def test_bad_request():
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        choose_threads(0)


def test_native_bf16_is_read_from_the_cpu_flags():
    from kdistill.hardware import native_bf16_flag

    xeon_amx = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n"
    xeon_plain = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert native_bf16_flag(xeon_amx) == "amx_bf16"
    assert native_bf16_flag(xeon_plain) is None  # AVX-512 alone emulates bf16
    assert native_bf16_flag(graviton3) == "bf16"
    assert native_bf16_flag("") is None


def test_total_memory_and_workers():
    from kdistill.hardware import choose_workers, total_memory_bytes

    memory = total_memory_bytes()
    assert memory is None or memory > 2**26
    assert choose_workers(3, threads=8) == 3  # asked for
    assert choose_workers(None, threads=2, cores=8) == 6
    assert choose_workers(None, threads=2, cores=2) == 1  # at least one
    with pytest.raises(ValueError, match="workers must be >= 0"):
        choose_workers(-1, threads=1)
