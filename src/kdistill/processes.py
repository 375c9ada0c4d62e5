"""Child processes that do not outlive the process that started them.

A sweep's workers and the ``--nproc`` launcher's torchrun train for a long time; if the parent
is killed (even with SIGKILL, which it cannot catch), they must stop too, or a rerun would race
them for the same run directories. On Linux the kernel delivers SIGTERM to a child whose parent
died once the child has asked for it with ``prctl(PR_SET_PDEATHSIG)``; elsewhere this is a
no-op and the process group is what stops them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to send this process SIGTERM when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() == 1:  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
