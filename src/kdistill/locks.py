"""Exclusive locks on run directories and caches, released by the OS when the holder dies.

A lock is an ``flock`` on a small file beside the locked directory; the holder writes its pid,
host and start time into it, so that a second writer's error can say who holds it. A process
that is killed holds nothing: the OS drops the lock with its file descriptors, and the next
start takes it (then finds the dead writer's temporaries and removes them).

This module imports nothing of kdistill's except :mod:`kdistill.files` and never imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kdistill.files import os_errors


class LockedError(ValueError):
    """Another process is writing the same run directory or cache."""


def lock_path_for(directory: str | Path) -> Path:
    """The lock file of a directory: a hidden sibling, so that it stays put when the directory
    itself is moved aside or replaced."""
    d = Path(directory)
    return d.parent / f".{d.name}.lock"


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"process {info['pid']} on host {info['host']} (since {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its pid and host are not recorded yet)"


@contextlib.contextmanager
def exclusive_lock(
    directory: str | Path,
    what: str,
    *,
    wait: bool = False,
    log: Callable[[str], None] | None = None,
    advice: str = "",
) -> Iterator[None]:
    """Hold the exclusive lock of ``directory`` for the block.

    Args:
        directory: the directory being written (the lock file is its hidden sibling).
        what: how the error names it (``"run directory runs/x/seed-0"``).
        wait: wait for the holder to finish instead of failing (readers that would otherwise
            build the same thing, e.g. runs sharing a teacher cache), saying whom they wait for.
        log: where the waiting message goes.
        advice: appended to the error (what the user can do).

    Raises:
        LockedError: another process holds it and ``wait`` is false; names its pid and host.
    """
    path = lock_path_for(directory)
    with os_errors(path, "create the lock file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise LockedError(
                    f"{what} is being written by {holder}; two writers would mix their files. "
                    + (advice or "Wait for it to finish or stop it first.")
                ) from None
            if log is not None:
                log(f"waiting for {holder}, which is writing {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
