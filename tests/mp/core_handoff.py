"""The hand-off between callers and the engine thread. Argument: the seed.

Waiting callers run their process set's cycles themselves while the engine thread is idle, and
on a one-rank set a submission completes on the submitting thread. Here several Python threads
per rank mix synchronous all-reduces (the caller drives the cycle), asynchronous ones waited on
later (the engine thread runs them while the caller computes) and one grouped submission, on the
global set and on a sub-set, so that callers and engine threads race for the cycles; every
result is checked against NumPy. On a one-rank set an asynchronous all-reduce is done before
synchronize() is called. A synchronous call wakes no engine thread (its caller drives the
cycle), an asynchronous one wakes it exactly once, and a synchronous-style submission nobody
waits on is still run by the engine thread's own cycles."""
import sys
import threading
import time

import numpy as np

import fusecomm as hvd
from fusecomm import _core, _engine
from _util import rank_data, run_main
from core_collectives import check_equal

THREADS = 3
STEPS = 40


def main():
    seed = int(sys.argv[1])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    # Every rank alone in a set of its own: one-rank sets complete on the submitting thread.
    # (alone, the global set is one already).
    solo_sets = [hvd.add_process_set([r]) for r in range(n)] if n > 1 else []
    solo = solo_sets[rank] if n > 1 else hvd.global_process_set
    for i in range(50):
        x = rank_data(seed + i, rank, (1 + i * 37,), "float32")
        handle = hvd.allreduce_async(x, op=hvd.Sum, name=f"solo{i}", process_set=solo)
        assert hvd.poll(handle), f"one-rank all-reduce {i} was not done on submission"
        check_equal(hvd.synchronize(handle), x, "float32", f"one-rank set (seed {seed})")
    pair = hvd.add_process_set([0, n - 1]) if n > 2 else None
    errors = []

    def work(t):
        try:
            for step in range(STEPS):
                key = seed + 1000 * t + step
                count = 1 + (key * 7919) % 3000
                ref = sum(rank_data(key, q, (count,), "float32") for q in range(n))
                mine = rank_data(key, rank, (count,), "float32")
                if step % 3 == 0:
                    got = hvd.allreduce(mine, op=hvd.Sum, name=f"t{t}.sync{step}")
                elif step % 3 == 1:
                    h = hvd.allreduce_async(mine, op=hvd.Sum, name=f"t{t}.async{step}")
                    np.linalg.norm(np.random.default_rng(key).random((64, 64)))  # compute
                    got = hvd.synchronize(h)
                else:
                    parts = hvd.grouped_allreduce([mine, mine[: count // 2]], op=hvd.Sum,
                                                  name=f"t{t}.group{step}")
                    check_equal(parts[1], ref[: count // 2], "float32",
                                f"thread {t} step {step} group member 1 (seed {seed})")
                    got = parts[0]
                check_equal(got, ref, "float32", f"thread {t} step {step} (seed {seed})")
                if pair is not None and rank in (0, n - 1) and step % 5 == 0:
                    pair_ref = sum(rank_data(key, q, (count,), "float32") for q in (0, n - 1))
                    got = hvd.allreduce(mine, op=hvd.Sum, name=f"t{t}.pair{step}",
                                        process_set=pair)
                    check_equal(got, pair_ref, "float32",
                                f"thread {t} step {step} on ranks 0 and {n - 1} (seed {seed})")
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=240)
        assert not th.is_alive(), f"a thread did not finish in 240 s (seed {seed})"
    if errors:
        raise errors[0]
    if n > 1:
        check_wakeups(seed, rank, n)
    hvd.barrier()
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


def check_wakeups(seed, rank, n, calls=60):
    ref_of = lambda i: sum(rank_data(seed + i, q, (5 + i,), "float32") for q in range(n))  # noqa
    before = _core.hand_off_counts()
    for i in range(calls):
        got = hvd.allreduce(rank_data(seed + i, rank, (5 + i,), "float32"), op=hvd.Sum,
                            name=f"wake.sync{i}")
        check_equal(got, ref_of(i), "float32", f"synchronous call {i} (seed {seed})")
    after = _core.hand_off_counts()
    woken = after["engine_thread_wakeups"] - before["engine_thread_wakeups"]
    cycles = sum(after[k] - before[k] for k in ("cycles_by_callers", "cycles_by_engine_thread"))
    assert woken == 0, f"{calls} synchronous calls woke the engine thread {woken} times: {after}"
    assert cycles >= calls, f"{calls} calls in {cycles} cycles on rank {rank}: {after}"
    before = after
    for i in range(calls):
        handle = hvd.allreduce_async(rank_data(seed + i, rank, (5 + i,), "float32"),
                                     op=hvd.Sum, name=f"wake.async{i}")
        check_equal(hvd.synchronize(handle), ref_of(i), "float32", f"async {i} (seed {seed})")
    woken = hvd_wakeups() - before["engine_thread_wakeups"]
    assert woken == calls, f"{calls} asynchronous calls woke the engine thread {woken} times"
    # Submitted as a synchronous call would be, then not waited on: the engine thread's idle
    # cycles (every FUSECOMM_CYCLE_TIME_MS) must run it; poll() drives nothing.
    hvd.barrier()
    handle = _engine.waited(hvd.allreduce_async, rank_data(seed, rank, (5,), "float32"),
                            op=hvd.Sum, name="wake.unattended")
    deadline = time.monotonic() + 60
    while not hvd.poll(handle):
        assert time.monotonic() < deadline, f"an unattended submission did not run (seed {seed})"
        time.sleep(0.005)
    check_equal(hvd.synchronize(handle), ref_of(0), "float32", f"unattended (seed {seed})")


def hvd_wakeups():
    return _core.hand_off_counts()["engine_thread_wakeups"]


if __name__ == "__main__":
    run_main(main)
