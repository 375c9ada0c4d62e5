"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` + DDP, launched by
``torchrun`` (gloo on CPU, nccl on GPU). Nothing here is home-made beyond reading torchrun's
environment and summing metrics across processes.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from kdistill.processes import die_with_parent

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_from_env(device_name: str, timeout_s: float) -> DistContext | None:
    """Join the process group torchrun set up (``None`` when not launched by torchrun or with a
    world of one). ``timeout_s`` bounds how long a collective waits for a process that died."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return None
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    ctx = DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
        backend=backend,
    )
    _stop_cleanly_on_sigterm(ctx)
    die_with_parent()  # a rank never trains on alone after torchrun, its parent, died
    return ctx


def _stop_cleanly_on_sigterm(ctx: DistContext) -> None:
    """torchrun sends SIGTERM to every process when one fails: turn it into a clear message
    (checkpoints are written atomically, so whatever is on disk is complete)."""

    def handler(signum: int, frame: Any) -> None:
        if ctx.is_main:
            print(
                "kdistill: another process of this distributed run failed (its error is above); "
                "stopping all processes. The last complete checkpoint is intact: continue with --resume.",
                file=sys.stderr,
                flush=True,
            )
        if _interpreter_exiting(frame):
            # The process is already on its way out (it failed first and is waiting for its
            # threads): an exception raised here would only be printed as "ignored", with a
            # traceback that says nothing. Leave at once instead.
            sys.stderr.flush()
            os._exit(143)
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def _interpreter_exiting(frame: Any) -> bool:
    """Whether the signal interrupted Python's shutdown rather than the program.

    While the program runs, the frames chain back to a module's top level (the entry script's,
    below runpy's frames under ``python -m``). Shutdown work (``threading._shutdown``, atexit
    callbacks such as weakref finalizers) is called by the interpreter itself, outside any module.
    """
    if sys.is_finalizing():
        return True
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return False
        frame = frame.f_back
    return True


class PeerFailureError(RuntimeError):
    """A collective failed because another process of the distributed run is gone."""

    def __init__(self, rank: int, cause: BaseException) -> None:
        first_line = (
            str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        )
        super().__init__(
            f"process {rank} lost contact with another process of this distributed run, which "
            f"probably failed (its own error is in the log). Checkpoints are written atomically, "
            f"so the last complete one is intact: continue with --resume. Communication error: "
            f"{first_line[:300]}"
        )


# The gloo and NCCL transports raise plain RuntimeErrors when a peer vanishes.
_TRANSPORT_MARKERS = ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process stopped."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TRANSPORT_MARKERS)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of numbers over all processes (identity without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenation of every process's 1-D tensor (lengths may differ)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, t.cpu())
    return torch.cat(gathered)


def from_first_process(value: T) -> T:
    """The first process's ``value`` in every process (``value`` itself without a group): for
    choices each process could make differently, such as a timed probe's."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------- FSDP2
# Fully sharded data parallelism (torch.distributed.fsdp.fully_shard, "FSDP2"): each process
# keeps a shard of every parameter, gradient and optimizer state; a block's parameters are
# all-gathered for its forward and backward and freed after. Every process must then run the
# same forwards in the same order (the all-gathers are collectives).


def sharded_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one: the first ``nn.ModuleList`` named
    ``blocks`` or ``layers`` found breadth-first (kdistill's GPTs, Hugging Face decoders); an
    empty list when there is none (the model is then sharded as one unit)."""
    queue = [model]
    while queue:
        module = queue.pop(0)
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and name in ("blocks", "layers"):
                return list(child)
            queue.append(child)
    return []


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` sharded in place over the processes of the group with FSDP2: each block
    (:func:`sharded_blocks`), then the rest (embeddings, final norm, head: the root unit, so
    that tied weights stay in one unit). Returns ``model`` itself."""
    from torch.distributed.fsdp import fully_shard

    for block in sharded_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole ``state_dict`` of a sharded model, gathered on the CPU of the first process
    (empty elsewhere). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state of a sharded model (keyed by parameter names), gathered on
    the CPU of the first process (empty elsewhere). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Restore :func:`full_optimizer_state`'s state (read by every process) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_options())
