"""Settings that must match across ranks are compared at init(): a rank with another value
makes init() raise on every rank, naming the setting and which ranks have which value, and a
later init() with matching settings works. Settings a rank may choose for itself (cycle time,
log level, stall warning time) may differ."""
import os

import numpy as np

import fusecomm as hvd
from _util import run_main

# (init keyword, environment variable, value on rank 0 and the others, value on the odd rank
# out, how the message shows the two values)
MUST_AGREE = [
    ("allreduce_algorithm", "FUSECOMM_ALLREDUCE_ALGORITHM", "auto", "ring", ("auto", "ring")),
    ("fusion_threshold", "FUSECOMM_FUSION_THRESHOLD", 67108864, 4096, ("67108864", "4096")),
    ("cache_capacity", "FUSECOMM_CACHE_CAPACITY", 1024, 0, ("1024", "0")),
    ("deadlock_seconds", "FUSECOMM_DEADLOCK_SECONDS", 5, 2.5, ("5", "2.5")),
    ("liveness_timeout_seconds", "FUSECOMM_LIVENESS_TIMEOUT_SECONDS", 15, 0, ("15", "0")),
]


def works(rank, n, tag):
    out = hvd.allreduce(np.full(4, rank + 1.0), op=hvd.Sum, name=f"works.{tag}")
    assert out.tolist() == [n * (n + 1) / 2] * 4, out
    hvd.shutdown()


def main():
    from mpi4py import MPI  # the rank before fusecomm is initialized

    rank, n = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    odd_one = n - 1  # the last rank differs
    for key, env, common, odd, (common_text, odd_text) in MUST_AGREE:
        try:
            hvd.init(**{key: odd if rank == odd_one else common})
            raise AssertionError(f"init() accepted {key} differing on rank {odd_one}")
        except hvd.CollectiveError as e:
            text = str(e)
        others = "rank 0" if n == 2 else "ranks " + ", ".join(map(str, range(n - 1)))
        expected = f"{env} ({others}: {common_text}; rank {odd_one}: {odd_text})"
        assert expected in text, f"{expected!r} not in: {text}"
        assert not hvd.is_initialized()
        os.environ[env] = str(common)  # agree now: init works again
        hvd.init()
        works(rank, n, key)
        del os.environ[env]
    # Settings each rank may choose for itself.
    hvd.init(cycle_time_ms=1 + rank, log_level=["warning", "error"][rank % 2],
             stall_warning_seconds=30 + rank)
    works(rank, n, "local")
    print(f"rank {rank}: OK", flush=True)


if __name__ == "__main__":
    run_main(main)
