"""A rank that never submits a tensor the others wait on: with a stall shutdown time set,
every rank gets an error naming the tensor and the missing rank, instead of a hang."""
import time

import numpy as np

import fusecomm as hvd
from _util import run_main


def main():
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    assert hvd.allreduce(np.ones(2), op=hvd.Sum, name="warmup").tolist() == [float(n)] * 2
    started = time.monotonic()
    try:
        if rank == 1:
            time.sleep(4.0)  # never submits 'lonely'; its engine stops meanwhile
            hvd.allreduce(np.ones(2), name="late")
        else:
            hvd.allreduce(np.ones(2), name="lonely")
        raise AssertionError("no error for a stalled collective")
    except (hvd.CollectiveError, hvd.NotInitializedError) as e:
        text = str(e)
    missing = "rank 1"
    assert "'lonely' submitted by" in text and f"missing on {missing}" in text, text
    assert time.monotonic() - started < 20, "the stall was not detected in time"
    print(f"rank {rank}: OK: {text}", flush=True)


if __name__ == "__main__":
    run_main(main)
