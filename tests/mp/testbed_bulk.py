"""Long bulk transfers across slow links: 16 MiB all-reduces in a loop for longer than the
liveness timeout. Mode 'busy': every call must succeed (a busy peer is not a dead one). Mode
'kill': rank VICTIM is SIGKILLed halfway, in the middle of a transfer, and every other rank must
get an error naming it. Arguments: mode, seconds, algorithm, victim rank."""
import os
import signal
import sys
import threading
import time

import numpy as np

import fusecomm as hvd
from _util import run_main

ELEMENTS = 4 << 20  # 16 MiB of float32


def main():
    mode, seconds, algorithm = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    victim = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    x = np.full(ELEMENTS, rank + 1, np.float32)
    expected = n * (n + 1) / 2
    if mode == "kill" and rank == victim:
        # From a timer thread, so the kill lands while a transfer is in flight.
        threading.Timer(seconds / 2, os.kill, (os.getpid(), signal.SIGKILL)).start()
    go = np.ones(1, np.int32)
    times = []
    started = time.monotonic()
    try:
        # Rank 0 decides when to stop, so that every rank makes the same calls.
        while hvd.broadcast(go, root_rank=0, name="go")[0]:
            t = time.monotonic()
            out = hvd.allreduce(x, op=hvd.Sum, name="bulk", algorithm=algorithm)
            times.append(time.monotonic() - t)
            assert out[0] == expected and out[-1] == expected, (out[0], out[-1], expected)
            go[0] = time.monotonic() - started < seconds
    except hvd.CollectiveError as e:
        if mode != "kill":
            raise
        elapsed = time.monotonic() - started
        assert f"rank {victim} stopped responding" in str(e), str(e)
        print(f"rank {rank}: DETECTED after {elapsed:.1f}s ({len(times)} calls): {e}", flush=True)
        return
    if mode == "kill":
        raise AssertionError(f"rank {rank}: no error after the death of rank {victim}")
    t = np.array(times)
    print(f"rank {rank}: OK {len(t)} calls in {time.monotonic() - started:.1f}s, median "
          f"{np.median(t):.3f}s, max {t.max():.3f}s", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
