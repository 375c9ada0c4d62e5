"""Crash injection for the interruption tests (on PYTHONPATH only for them).

``KDISTILL_KILL_AT_WRITE=N`` kills this process with SIGKILL at its N-th atomic write, after the
temporary file (or checkpoint folder) is complete and before it is renamed into place: the state
a crash of the machine leaves. ``KDISTILL_KILL_IN_SAVE=1`` makes that write a checkpoint state
(``torch.save``) that dies after writing half of its file.
"""

import os
import signal

_at = int(os.environ.get("KDISTILL_KILL_AT_WRITE", "0"))
if _at:
    _count = [0]
    _replace = os.replace

    def _die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp"):  # kdistill's atomic writes rename .NAME.*.tmp
            _count[0] += 1
            if _count[0] == _at and not os.environ.get("KDISTILL_KILL_IN_SAVE"):
                _die()
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace

    if os.environ.get("KDISTILL_KILL_IN_SAVE"):
        import torch

        _save = torch.save

        def save(obj, f, *args, **kwargs):
            _count[0] += 1
            if _count[0] >= _at:
                with open(f, "wb") as out:
                    out.write(b"half a checkpoint")
                _die()
            return _save(obj, f, *args, **kwargs)

        torch.save = save
