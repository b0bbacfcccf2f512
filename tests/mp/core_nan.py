"""NaN propagates through every reduction (Sum, Average, Min, Max, Product) with every
all-reduce algorithm and every float dtype, and through reduce-scatter: an element is NaN in
the result exactly where some rank contributed a NaN, and equals NumPy's reduction elsewhere.
Argument: seed."""
import sys

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_algorithms import ALGORITHMS
from core_collectives import reference

FLOATS = ["float16", "bfloat16", "float32", "float64"]
OPS = {hvd.Sum: "Sum", hvd.Average: "Average", hvd.Min: "Min", hvd.Max: "Max",
       hvd.Product: "Product"}
# Small (auto takes MPI's own all-reduce there) and larger than one ring segment per rank.
SIZES = [1, 5, 37, 4099]


def with_nans(seed, rank, n, size, dtype_name, op):
    """Rank q's data, NaN at the positions i with i % (n + 1) == q: every rank has some NaN,
    and one position in n + 1 has none (the reference value must survive there)."""
    x = rank_data(seed, rank, (size,), dtype_name, op == hvd.Product)
    x[np.arange(size) % (n + 1) == rank] = np.nan
    return x


def check(out, xs, op, dtype_name, n, what):
    nan_expected = np.zeros(xs[0].shape, bool)
    for x in xs:
        nan_expected |= np.isnan(x.astype(np.float64))
    nan_got = np.isnan(out.astype(np.float64))
    wrong = np.flatnonzero(nan_got != nan_expected)
    assert wrong.size == 0, (f"{what}: NaN lost or invented at {wrong[:8]} "
                             f"(got {out[wrong[:8]]})")
    clean = [np.where(nan_expected, 0, x).astype(x.dtype) for x in xs]
    ref = reference(op, clean, dtype_name, n)
    rtol = 1e-2 if dtype_name in ("float16", "bfloat16") else 1e-6
    got = out.astype(np.float64)[~nan_expected]
    want = ref.astype(np.float64)[~nan_expected]
    assert np.allclose(got, want, rtol=rtol, atol=rtol), f"{what}: {got[:8]} vs {want[:8]}"


def main():
    seed = int(sys.argv[1])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    checked = 0
    for algorithm in ALGORITHMS:
        for dtype_name in FLOATS:
            for op, op_name in OPS.items():
                for size in SIZES:
                    xs = [with_nans(seed + size, q, n, size, dtype_name, op) for q in range(n)]
                    what = f"allreduce {algorithm} {dtype_name} {op_name} size {size} (seed {seed})"
                    out = hvd.allreduce(xs[rank], op=op, algorithm=algorithm,
                                        name=f"nan.{algorithm}.{dtype_name}.{op}.{size}")
                    check(out, xs, op, dtype_name, n, what)
                    checked += 1
    for dtype_name in FLOATS:
        for op, op_name in OPS.items():
            size = 4 * n * (n + 1)
            xs = [with_nans(seed, q, n, size, dtype_name, op) for q in range(n)]
            out = hvd.reducescatter(xs[rank], op=op, name=f"nan.rs.{dtype_name}.{op}")
            rows = size // n
            part = [x[rank * rows:(rank + 1) * rows] for x in xs]
            check(out, part, op, dtype_name, n, f"reducescatter {dtype_name} {op_name} (seed {seed})")
            checked += 1
    print(f"rank {rank}: OK ({checked} NaN cases)", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
