"""Back-to-back small all-reduces through fusecomm's engine against mpi4py's Allreduce in the
same processes: the engine's fixed cost per synchronous call (docs/performance.md).

    fusecomm run -np 2 -- python benchmarks/handoff_loop.py [--calls 40000] [--bytes 8]

Prints rank 0's mean per call for each, twice (the second after everything is warm)."""
import argparse
import time

import numpy as np
from mpi4py import MPI

import fusecomm


def mean_seconds(call, calls):
    MPI.COMM_WORLD.Barrier()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40000)
    parser.add_argument("--bytes", type=int, default=8)
    args = parser.parse_args()
    fusecomm.init()
    x = np.ones(max(1, args.bytes // 4), np.float32)
    out = np.empty_like(x)
    for _ in range(2):
        engine = mean_seconds(lambda: fusecomm.allreduce(x, op=fusecomm.Sum, name="loop"),
                              args.calls)
        direct = mean_seconds(lambda: MPI.COMM_WORLD.Allreduce(x, out), args.calls)
        if fusecomm.rank() == 0:
            print(f"{x.nbytes} B on {fusecomm.size()} ranks: fusecomm {engine * 1e6:.1f} us, "
                  f"mpi4py Allreduce {direct * 1e6:.1f} us, ratio {engine / direct:.1f}",
                  flush=True)
    fusecomm.shutdown()


if __name__ == "__main__":
    main()
