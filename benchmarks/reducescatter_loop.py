"""fusecomm's reducescatter against mpi4py's Reduce_scatter_block in the same processes
(docs/performance.md, "All-gather without libnbc"): three rounds of 100 back-to-back calls
each at 64 KiB, 1 MiB and 16 MiB; rank 0 prints the means (µs) and their ratio.

    fusecomm run -np 2 -- python benchmarks/reducescatter_loop.py

mpi4py's own call is bimodal here (about 215 or 620 µs at 1 MiB from one launch to the next),
so compare fusecomm's times across builds, not only the ratio."""
import time, numpy as np
from mpi4py import MPI
import fusecomm
fusecomm.init()
n = fusecomm.size(); calls = 100
for nb in [65536, 1 << 20, 16 << 20]:
    x = np.ones(nb // 4, np.float32); out = np.empty(x.size // n, np.float32)
    got = fusecomm.reducescatter(x, op=fusecomm.Sum, name="chk")
    assert np.all(got == n)
    def mean(call):
        MPI.COMM_WORLD.Barrier(); t = time.perf_counter()
        for _ in range(calls): call()
        return (time.perf_counter() - t) / calls * 1e6
    res = [(mean(lambda: MPI.COMM_WORLD.Reduce_scatter_block(x, out)),
            mean(lambda: fusecomm.reducescatter(x, op=fusecomm.Sum, name="rs"))) for _ in range(3)]
    if fusecomm.rank() == 0:
        print(nb, "; ".join(f"mpi4py {a:.0f} fusecomm {b:.0f} ({b/a:.2f})" for a, b in res), flush=True)
fusecomm.shutdown()
