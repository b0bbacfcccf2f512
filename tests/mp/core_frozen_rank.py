"""A frozen rank (SIGSTOP): the others' stall warning names it while they wait (its heartbeat
stopped too), the liveness timeout then fails them naming it; resumed (SIGCONT, sent by rank 0
after that), the frozen rank's own error says that it was the one frozen, instead of blaming
rank 0, which went on and left. Argument: a scratch directory (for the exit handshake).
Run with FUSECOMM_STALL_WARNING_SECONDS=1 and FUSECOMM_LIVENESS_TIMEOUT_SECONDS=4."""
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import fusecomm as hvd
from _util import run_main


def leave_together(scratch, rank, n):
    """Every rank waits (bounded) until all have checked their error before exiting: mpirun
    ends the whole job when one rank leaves without finalizing, which ranks do after a
    liveness failure, and that would cut off a rank still checking."""
    (scratch / f"done.{rank}").touch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((scratch / f"done.{q}").exists()
                                                  for q in range(n)):
        time.sleep(0.1)


def main():
    scratch = Path(sys.argv[1])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    victim = n - 1
    pids = hvd.allgather(np.array([os.getpid()], np.int64), name="pids").tolist()
    assert hvd.allreduce(np.ones(2), op=hvd.Sum, name="warmup").tolist() == [float(n)] * 2
    if rank == victim:
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(1.0)  # resumed: the liveness thread looks within milliseconds
        try:
            hvd.allreduce(np.ones(2), name="after_resume")
            raise AssertionError("the resumed rank went on as if nothing happened")
        except (hvd.CollectiveError, hvd.NotInitializedError) as e:
            text = str(e)
        assert f"this rank ({victim}) was frozen for" in text, text
        assert "rank 0 stopped responding" not in text, text
        print(f"rank {rank}: OK (resumed): {text}", flush=True)
    else:
        time.sleep(0.5)
        started = time.monotonic()
        try:
            hvd.allreduce(np.ones(2), name="x")
            raise AssertionError("no error while a rank was frozen")
        except hvd.CollectiveError as e:
            text = str(e)
        took = time.monotonic() - started
        assert f"rank {victim} stopped responding" in text, text
        assert took < 4 + 10, f"the frozen rank was reported after {took:.1f} s"
        if rank == 0:
            time.sleep(2.0)  # frozen for longer than the liveness timeout, whatever the beat phase
            os.kill(pids[victim], signal.SIGCONT)
        print(f"rank {rank}: OK: {text}", flush=True)
    leave_together(scratch, rank, n)


if __name__ == "__main__":
    run_main(main)
