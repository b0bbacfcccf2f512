"""Every all-reduce algorithm through the engine (fusion, scaling, Average) on every dtype and
op, checked element by element on every rank. Arguments: seed."""
import os
import sys

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_collectives import check_equal, test_allreduce

ALGORITHMS = ("ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d", "shm", "mpi",
              "auto")


def fused_groups(seed, rank, n):
    """Many small tensors fused into one buffer per algorithm."""
    for algorithm in ALGORITHMS:
        handles = [hvd.allreduce_async(rank_data(seed + i, rank, (i * 7,), "float32"),
                                       name=f"fused.{algorithm}.{i}", op=hvd.Sum,
                                       algorithm=algorithm) for i in range(30)]
        for i, h in enumerate(handles):
            ref = sum(rank_data(seed + i, q, (i * 7,), "float32") for q in range(n))
            check_equal(hvd.synchronize(h), ref, "float32", f"fused {algorithm} {i}")


def segmented(seed, rank, n):
    """Above 4 MiB the native all-reduce runs as 1 MiB segments, four in flight, and the
    shared-memory one reads its peers' buffers (a chunk of up to 1 MiB at a time), or where
    that is off (FUSECOMM_SHM_SINGLE_COPY_MIN_BYTES=-1) goes in pieces of 1 MiB a rank,
    alternating between two slot sets: an odd count spans several rounds and ends with a
    partial one."""
    count = (5 << 20) // 4 + 3
    for op, dtype, combine in ((hvd.Sum, "float32", np.add), (hvd.Max, "int32", np.maximum)):
        data = [rank_data(seed, q, (count,), dtype) for q in range(n)]
        for algorithm in ("mpi", "shm"):
            got = hvd.allreduce(data[rank], op=op, name=f"segmented.{dtype}.{algorithm}",
                                algorithm=algorithm)
            check_equal(got, combine.reduce(data), dtype,
                        f"segmented {algorithm} {dtype} (seed {seed})")


def nonblocking_allreduce_is_the_ring():
    """init() switches Open MPI's non-blocking all-reduce (the `mpi` algorithm) from libnbc's
    binomial choice to its ring, unless the user chose one; -1: an MPI without the variable."""
    chosen = os.environ.get("OMPI_MCA_coll_libnbc_iallreduce_algorithm")
    got = hvd._core.mpi_nonblocking_allreduce_algorithm()
    assert got == (int(chosen) if chosen else 1) or got == -1, (got, chosen)


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    nonblocking_allreduce_is_the_ring()
    checked = test_allreduce(seed, rank, n, ALGORITHMS, sizes=[0, 1, 7, 13, 1021, 65537])
    fused_groups(seed, rank, n)
    segmented(seed, rank, n)
    print(f"rank {rank}: OK ({checked} cases, local_size {hvd.local_size()})", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
