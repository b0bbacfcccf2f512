"""The deadlock detector, with the stall settings at their defaults (no stall shutdown).
Argument: the mode.

cross: rank r waits on a tensor only it submitted ('only.r'), so every rank waits on a
  collective some other rank lacks: every rank gets a CollectiveError saying deadlock, naming
  each tensor and the ranks that lack it, in under 10 s; later calls fail, they do not hang.
split: ranks 0..n-2 wait on 'shared', the last rank waits on 'last' alone: named the same way.
busy: the last rank computes (sleeps in Python) 8 s before submitting its part while the
  others wait: not a deadlock (nobody is blocked on that rank's side); the result is exact.
pending_but_busy: rank 0 submits 'b' asynchronously (which the others submit only later) and
  computes 8 s before submitting 'a', which the others wait on meanwhile: rank 0 has a request
  the others lack but does not wait, so this is no deadlock either."""
import sys
import time

import numpy as np

import fusecomm as hvd
from _util import run_main


def expect_deadlock(fn, *fragments):
    started = time.monotonic()
    try:
        fn()
        raise AssertionError("no error for a deadlock")
    except hvd.CollectiveError as e:
        text = str(e)
    took = time.monotonic() - started
    assert "deadlock" in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in: {text}"
    assert took < 10, f"the deadlock was reported after {took:.1f} s (bound: 10 s): {text}"
    return text, took


def ranks_text(ranks):
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def main():
    mode = sys.argv[1]
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    assert hvd.allreduce(np.ones(2), op=hvd.Sum, name="warmup").tolist() == [float(n)] * 2
    last = n - 1
    if mode == "cross":
        fragments = [f"'only.{r}' submitted by rank {r}, missing on "
                     f"{ranks_text([q for q in range(n) if q != r])}" for r in range(n)]
        text, took = expect_deadlock(lambda: hvd.allreduce(np.ones(3), name=f"only.{rank}"),
                                     *fragments)
        try:
            hvd.allreduce(np.ones(3), name="after")
            raise AssertionError("the engine kept running after a deadlock")
        except (hvd.CollectiveError, hvd.NotInitializedError) as e:
            assert "deadlock" in str(e), e
    elif mode == "split":
        name = "last" if rank == last else "shared"
        text, took = expect_deadlock(
            lambda: hvd.allreduce(np.ones(3), name=name),
            f"'shared' submitted by {ranks_text(list(range(last)))}, missing on rank {last}",
            f"'last' submitted by rank {last}, missing on {ranks_text(list(range(last)))}")
    elif mode == "busy":
        if rank == last:
            time.sleep(8.0)
        out = hvd.allreduce(np.full(3, rank + 1.0), op=hvd.Sum, name="late")
        assert out.tolist() == [n * (n + 1) / 2] * 3, out
        text, took = "no deadlock", 0.0
    elif mode == "pending_but_busy":
        if rank == 0:
            handle = hvd.allreduce_async(np.full(3, rank + 1.0), op=hvd.Sum, name="b")
            time.sleep(8.0)
            a = hvd.allreduce(np.full(3, rank + 1.0), op=hvd.Sum, name="a")
            b = hvd.synchronize(handle)
        else:
            a = hvd.allreduce(np.full(3, rank + 1.0), op=hvd.Sum, name="a")
            b = hvd.allreduce(np.full(3, rank + 1.0), op=hvd.Sum, name="b")
        assert a.tolist() == b.tolist() == [n * (n + 1) / 2] * 3, (a, b)
        text, took = "no deadlock", 0.0
    else:
        raise ValueError(mode)
    print(f"rank {rank}: OK after {took:.1f}s: {text}", flush=True)


if __name__ == "__main__":
    run_main(main)
