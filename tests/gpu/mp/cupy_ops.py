"""fusecomm.ops (the NumPy-style API) on CuPy arrays: allreduce, broadcast, allgather,
reducescatter and alltoall on the GPU, results as CuPy arrays on the same device, checked
element by element against NumPy on every rank.

Run: mpirun -np N python tests/gpu/mp/cupy_ops.py"""
import os
import sys

import cupy
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "mp"))
from _util import rank_data, run_main  # noqa: E402

import fusecomm  # noqa: E402
from fusecomm import ops  # noqa: E402


def main():
    fusecomm.init()
    r, n = fusecomm.rank(), fusecomm.size()
    cupy.cuda.Device(fusecomm.local_rank() % cupy.cuda.runtime.getDeviceCount()).use()
    for dtype in ("float32", "float64", "int32", "int64", "uint8", "float16"):
        for count in (0, 1, 13, 3 * n + 1, 1021):
            seed = [21, count]
            x = cupy.asarray(rank_data(seed, r, (count,), dtype))
            out = ops.allreduce(x, op=fusecomm.Sum)
            assert isinstance(out, cupy.ndarray), type(out)
            expected = sum(rank_data(seed, q, (count,), dtype).astype(np.float64) for q in range(n))
            np.testing.assert_array_equal(cupy.asnumpy(out), np.asarray(expected).astype(dtype))
            b = ops.broadcast(x, n - 1)
            np.testing.assert_array_equal(cupy.asnumpy(b), rank_data(seed, n - 1, (count,), dtype))
        rows = lambda q: (q * 5 + 1) % 3  # noqa: E731
        g = ops.allgather(cupy.asarray(rank_data([22, r], r, (rows(r), 2), dtype)))
        expected = np.concatenate([rank_data([22, q], q, (rows(q), 2), dtype) for q in range(n)])
        assert isinstance(g, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(g), expected)
        total = 2 * n + 1
        rs = ops.reducescatter(cupy.asarray(rank_data([23], r, (total,), dtype)), op=fusecomm.Sum)
        full = sum(rank_data([23], q, (total,), dtype).astype(np.float64) for q in range(n))
        start = sum(total // n + (1 if q < total % n else 0) for q in range(r))
        mine = total // n + (1 if r < total % n else 0)
        np.testing.assert_array_equal(cupy.asnumpy(rs), full[start:start + mine].astype(dtype))
        splits = [(r + p) % 3 for p in range(n)]
        a, received = ops.alltoall(cupy.asarray(rank_data([24, r], r, (sum(splits),), dtype)),
                                   splits=splits)
        parts = []
        for q in range(n):
            qs = [(q + p) % 3 for p in range(n)]
            parts.append(rank_data([24, q], q, (sum(qs),), dtype)[sum(qs[:r]):sum(qs[:r + 1])])
        np.testing.assert_array_equal(cupy.asnumpy(a), np.concatenate(parts))
        assert list(received) == [(q + r) % 3 for q in range(n)]
    fusecomm.shutdown()
    print(f"rank {r}: CuPy collectives ok")


if __name__ == "__main__":
    run_main(main)
