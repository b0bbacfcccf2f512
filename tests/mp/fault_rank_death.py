"""One rank leaves mid-training (mode 'kill': SIGKILL; 'raise': an uncaught exception;
'exit': sys.exit without shutdown(); 'shutdown': shutdown() while the others still submit;
'kill-in-shm': SIGKILL from a timer while every rank streams 8 MiB shared-memory all-reduces,
so the others are most likely waiting inside the shared segment when it dies).
Every other rank must get an error naming that rank and the cause within the liveness timeout,
never hang. Arguments: mode, victim rank."""
import os
import signal
import sys
import threading
import time

import numpy as np

import fusecomm as hvd

VICTIM = int(sys.argv[2]) if len(sys.argv) > 2 else 1


def main():
    mode = sys.argv[1]
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    x = np.ones(1000, np.float32)
    in_shm = mode == "kill-in-shm"
    big = np.ones(2 << 20, np.float32)
    for step in range(20):
        out = hvd.allreduce(x, op=hvd.Sum, name=f"grad.{step % 4}")
        assert out[0] == n
    if rank == VICTIM and in_shm:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
    elif rank == VICTIM:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "raise":
            raise RuntimeError(f"rank {rank} fails on purpose")
        if mode == "shutdown":
            hvd.shutdown()
            time.sleep(2)
            sys.exit(0)
        sys.exit(3)
    started = time.monotonic()
    try:
        for step in range(1000):
            if in_shm:
                hvd.allreduce_(big, op=hvd.Max, name="big", algorithm="shm")
            else:
                hvd.allreduce(x, op=hvd.Sum, name=f"grad.{step % 4}")
        print(f"rank {rank}: FAIL no error after the death of rank {VICTIM}", flush=True)
        sys.exit(2)
    except (hvd.CollectiveError, hvd.NotInitializedError) as e:
        elapsed = time.monotonic() - started
        text = str(e)
    # A killed rank is silent (liveness); one that raises or exits still runs Python's exit
    # handlers, which shut fusecomm down and say so. In the shared-memory all-reduce a rank
    # reading the victim's buffer finds its process gone at once.
    expected = {"kill": [f"rank {VICTIM} stopped responding"],
                "kill-in-shm": [f"rank {VICTIM} stopped responding",
                                f"rank {VICTIM}'s process ("],
                "shutdown": [f"shut down by rank {VICTIM} (it called shutdown())"]}.get(
        mode, [f"shut down by rank {VICTIM} (its process exited)"])
    assert any(e in text for e in expected), text
    print(f"rank {rank}: DETECTED after {elapsed:.1f}s: {text}", flush=True)
    # Later calls fail at once with the same cause. The marker line is what the test counts:
    # the job fails anyway (the victim's exit code), so an assertion here alone would be masked.
    later_started = time.monotonic()
    try:
        hvd.allreduce(x, name="after")
        print(f"rank {rank}: FAIL a collective after the failure did not raise", flush=True)
        sys.exit(2)
    except (hvd.CollectiveError, hvd.NotInitializedError) as e:
        later = str(e)
    later_seconds = time.monotonic() - later_started
    if f"rank {VICTIM}" not in later or later_seconds > 5:
        print(f"rank {rank}: FAIL the later call raised after {later_seconds:.1f}s without naming "
              f"rank {VICTIM}: {later}", flush=True)
        sys.exit(2)
    print(f"rank {rank}: LATER CALLS FAIL: {later}", flush=True)
    # A normal exit: MPI_Finalize runs where the transport is intact and is skipped where a
    # peer died (it could never complete).
    sys.stdout.flush()


if __name__ == "__main__":
    main()
