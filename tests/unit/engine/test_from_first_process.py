"""In a data-parallel run every process takes the first one's choice (e.g. the teacher's
precision, whose probe times differently in each process)."""

import torch.distributed as dist
import torch.multiprocessing as mp

from kdistill.engine.distributed import from_first_process
from kdistill.experiment.precision import PrecisionChoice


def _worker(rank, world, rendezvous, results):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        mine = PrecisionChoice("bf16" if rank == 0 else "fp32", f"probe of process {rank}", True)
        results[rank] = from_first_process(mine)
    finally:
        dist.destroy_process_group()


def test_every_process_takes_the_first_ones_choice(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, tmp_path / "rendezvous", results), nprocs=2, join=True)
        got = dict(results)
    assert got[0] == got[1] == PrecisionChoice("bf16", "probe of process 0", True)


def test_without_a_process_group_the_value_is_kept():
    assert from_first_process({"a": 1}) == {"a": 1}
