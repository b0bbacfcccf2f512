"""A rank blocked in synchronize() still runs Python's signal handlers: a handler that raises
(SIGALRM here; SIGINT's KeyboardInterrupt the same way) interrupts the wait within a fraction
of a second, the collective stays in flight, and synchronizing the same handle again returns
the exact result once the peer submits. A synchronous call interrupted the same way leaves its
collective in flight too, adopted with its buffers, which receive the result. The last rank
submits only after 6 s (and its synchronous call 3 s after that)."""
import os
import signal
import threading
import time

import numpy as np

import fusecomm as hvd
from fusecomm import _engine
from _util import run_main


class Alarm(Exception):
    pass


def on_alarm(signum, frame):
    raise Alarm()


def interrupted_wait(handle, send_signal, expected):
    """Sends a signal to this process in 0.5 s; returns how long synchronize took to raise."""
    started = time.monotonic()
    threading.Timer(0.5, send_signal).start()
    try:
        hvd.synchronize(handle)
        raise AssertionError(f"synchronize() was not interrupted by {expected.__name__}")
    except expected:
        return time.monotonic() - started


def interrupted_synchronous_call(rank, expected):
    """An in-place allreduce_ whose wait a signal abandons: its handle is adopted with the
    array, and the array receives the result once the last rank submits."""
    signal.alarm(1)
    array = np.full(4, rank + 1.0)
    try:
        hvd.allreduce_(array, op=hvd.Sum, name="c")
        raise AssertionError("the synchronous allreduce_ was not interrupted")
    except Alarm:
        pass
    with _engine._lock:
        adopted = list(_engine._handles.items())
    assert len(adopted) == 1 and any(k is array for k in adopted[0][1][0]), adopted
    got = _engine.synchronize(adopted[0][0])
    assert got is array and array.tolist() == expected, (got, array)


def main():
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    last = n - 1
    expected = [n * (n + 1) / 2] * 4
    if rank == last:
        time.sleep(6.0)
        a = hvd.allreduce(np.full(4, rank + 1.0), op=hvd.Sum, name="a")
        b = hvd.allreduce(np.full(4, rank + 1.0), op=hvd.Sum, name="b")
        time.sleep(3.0)  # the others' synchronous "c" is interrupted at 1 s
        hvd.allreduce_(np.full(4, rank + 1.0), op=hvd.Sum, name="c")
    else:
        signal.signal(signal.SIGALRM, on_alarm)
        handle_a = hvd.allreduce_async(np.full(4, rank + 1.0), op=hvd.Sum, name="a")
        took = interrupted_wait(handle_a, lambda: signal.alarm(1), Alarm)
        assert took < 4.0, f"the signal handler ran only after {took:.1f} s"
        handle_b = hvd.allreduce_async(np.full(4, rank + 1.0), op=hvd.Sum, name="b")
        pid = os.getpid()
        took_b = interrupted_wait(handle_b, lambda: os.kill(pid, signal.SIGINT), KeyboardInterrupt)
        assert took_b < 4.0, f"KeyboardInterrupt came only after {took_b:.1f} s"
        a = hvd.synchronize(handle_a)  # still in flight: the same handle completes
        b = hvd.synchronize(handle_b)
        interrupted_synchronous_call(rank, expected)
        print(f"rank {rank}: interrupted after {took:.2f}s and {took_b:.2f}s", flush=True)
    assert a.tolist() == expected and b.tolist() == expected, (a, b)
    print(f"rank {rank}: OK", flush=True)


if __name__ == "__main__":
    run_main(main)
