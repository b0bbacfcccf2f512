"""Every all-reduce algorithm through the engine (fusion, scaling, Average) on every dtype and
op, checked element by element on every rank. Arguments: seed."""
import sys

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_collectives import check_equal, test_allreduce

ALGORITHMS = ("ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d", "mpi", "auto")


def fused_groups(seed, rank, n):
    """Many small tensors fused into one buffer per algorithm."""
    for algorithm in ALGORITHMS:
        handles = [hvd.allreduce_async(rank_data(seed + i, rank, (i * 7,), "float32"),
                                       name=f"fused.{algorithm}.{i}", op=hvd.Sum,
                                       algorithm=algorithm) for i in range(30)]
        for i, h in enumerate(handles):
            ref = sum(rank_data(seed + i, q, (i * 7,), "float32") for q in range(n))
            check_equal(hvd.synchronize(h), ref, "float32", f"fused {algorithm} {i}")


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    checked = test_allreduce(seed, rank, n, ALGORITHMS, sizes=[0, 1, 7, 13, 1021, 65537])
    fused_groups(seed, rank, n)
    print(f"rank {rank}: OK ({checked} cases, local_size {hvd.local_size()})", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
