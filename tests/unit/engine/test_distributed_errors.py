import torch.distributed as dist

from kdistill.engine.distributed import PeerFailureError, is_peer_failure


def test_transport_errors_of_a_vanished_peer_are_recognized():
    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:23187: "
        "Connection reset by peer. This is typically caused by a remote worker hanging"
    )
    assert is_peer_failure(gloo)
    assert is_peer_failure(dist.DistBackendError("NCCL communicator was aborted"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_peer_failure(ValueError("gloo"))


def test_the_message_says_what_happened_and_how_to_continue():
    err = PeerFailureError(0, RuntimeError("Read error: Connection reset by peer\nmore detail"))
    text = str(err)
    assert text.startswith("process 0 lost contact with another process")
    assert "--resume" in text and "Connection reset by peer" in text and "more detail" not in text


_PROBE = """
import atexit, sys, threading
from kdistill.engine.distributed import _interpreter_exiting

def during_work():
    return _interpreter_exiting(sys._getframe())

print("work", during_work())
atexit.register(lambda: print("atexit", _interpreter_exiting(sys._getframe()), flush=True))
"""


def test_shutdown_is_told_apart_from_the_program_running(tmp_path):
    """A SIGTERM from torchrun can land in an atexit callback (a weakref finalizer) of a process
    that already failed: the handler must leave quietly there, not raise into the callback."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    for command in ([str(script)], ["-m", "probe"]):  # torchrun starts kdistill with -m
        done = subprocess.run(
            [sys.executable, *command],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.stdout.split("\n")[:2] == ["work False", "atexit True"], done.stdout
