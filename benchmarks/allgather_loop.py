"""fusecomm's allgather against mpi4py's Allgather in the same processes, interleaved, at sizes
from 4 KiB to 4 MiB a rank (docs/performance.md, "All-gather without libnbc").

    fusecomm run -np 2 -- python benchmarks/allgather_loop.py [--calls 200] [--json FILE]

Each round times `calls` back-to-back calls of each (after an MPI barrier); three rounds per
size. Rank 0 prints the mean per call and the ratio, and appends one JSON line per size."""
import argparse
import json
import time

import numpy as np
from mpi4py import MPI

import fusecomm

SIZES = [4096, 65536, 262144, 1 << 20, 4 << 20]


def mean_us(call, calls):
    MPI.COMM_WORLD.Barrier()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    fusecomm.init()
    n = fusecomm.size()
    for nbytes in SIZES:
        x = np.full(nbytes // 4, fusecomm.rank(), np.float32)
        out = np.empty(x.size * n, np.float32)
        got = fusecomm.allgather(x, name="check")
        assert np.array_equal(got, np.repeat(np.arange(n, dtype=np.float32), x.size)), nbytes
        rounds = [(mean_us(lambda: MPI.COMM_WORLD.Allgather(x, out), args.calls),
                   mean_us(lambda: fusecomm.allgather(x, name="loop"), args.calls))
                  for _ in range(3)]
        if fusecomm.rank() == 0:
            print(f"{nbytes:>8} B a rank on {n} ranks: " + "; ".join(
                f"mpi4py {m:.1f} us, fusecomm {f:.1f} us ({f / m:.2f})" for m, f in rounds),
                flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"ranks": n, "bytes_per_rank": nbytes,
                                        "mpi4py_us": [m for m, _ in rounds],
                                        "fusecomm_us": [g for _, g in rounds]}) + "\n")
    fusecomm.shutdown()


if __name__ == "__main__":
    main()
