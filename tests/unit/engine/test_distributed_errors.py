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
