"""join(): ranks with fewer batches finish early; the others' collectives go on without them
(joined ranks contribute zeros / no rows) and join() returns the last rank to join."""
import numpy as np

import fusecomm as hvd
from _util import run_main


def main():
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    steps = [3 * (q + 1) for q in range(n)]  # rank q runs 3(q+1) steps
    for rounds in range(2):  # join twice: the state resets after everyone has joined
        for step in range(steps[rank]):
            active = [q for q in range(n) if steps[q] > step]
            x = np.full(7, float(rank + 1), np.float32)
            out = hvd.allreduce(x, op=hvd.Sum, name=f"grad.{step % 2}")
            assert out.tolist() == [float(sum(q + 1 for q in active))] * 7, (step, out)
            avg = hvd.allreduce(x, name=f"avg.{step % 3}")  # Average divides by the full size
            assert np.allclose(avg, sum(q + 1 for q in active) / n), (step, avg)
            gathered = hvd.allgather(np.full((rank + 1, 2), rank, np.int64), name="rows")
            expected = np.concatenate([np.full((q + 1, 2), q, np.int64) for q in active])
            assert np.array_equal(gathered, expected), (step, gathered)
        last = hvd.join()
        assert last == n - 1, last
    hvd.barrier()
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
