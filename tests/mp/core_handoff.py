"""The hand-off between callers and the engine thread. Argument: the seed.

Waiting callers run their process set's cycles themselves while the engine thread is idle, and
on a one-rank set a submission completes on the submitting thread. Here several Python threads
per rank mix synchronous all-reduces (the caller drives the cycle), asynchronous ones waited on
later (the engine thread runs them while the caller computes) and one grouped submission, on the
global set and on a sub-set, so that callers and engine threads race for the cycles; every
result is checked against NumPy. On a one-rank set an asynchronous all-reduce is done before
synchronize() is called. A synchronous call wakes no engine thread (its caller drives the
cycle), an asynchronous one wakes it exactly once, and a synchronous-style submission nobody
waits on is still run by the engine thread's own cycles. Small synchronous all-reduces ride in
the negotiation's slot exactly when they should."""
import sys
import threading
import time

import numpy as np

import fusecomm as hvd
from fusecomm import _core, _engine
from _util import NUMPY_DTYPES, numpy_dtype, rank_data, run_main
from core_collectives import check_equal, reference

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
        check_negotiation_slot(seed, rank, n)
    check_repeated_calls(seed, rank, n)
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
    x = rank_data(seed, rank, (5,), "float32")
    out = np.empty_like(x)
    request = _core.Request(_engine.ALLREDUCE, "wake.unattended", _engine.DTYPE_CODES["float32"],
                            x.shape)
    request.caller_waits = True
    handle = _engine.submit(request, _core.array_address(x), _core.array_address(out), (x, out),
                            lambda result: out)
    deadline = time.monotonic() + 60
    while not _engine.poll(handle):
        assert time.monotonic() < deadline, f"an unattended submission did not run (seed {seed})"
        time.sleep(0.005)
    check_equal(_engine.synchronize(handle), ref_of(0), "float32", f"unattended (seed {seed})")


def check_negotiation_slot(seed, rank, n):
    """Small synchronous all-reduces of a name seen before ride in the negotiation's slot
    (csrc/transport/negotiation_slot.h): every dtype and op, sizes up to the slot's 128 bytes,
    scales, all against NumPy; every call after a name's first rides, and asynchronous calls,
    a named algorithm and 129 bytes and more do not."""
    def rides():
        return _core.hand_off_counts()["allreduces_in_negotiation"]

    before, calls = rides(), 0
    for k, dtype_name in enumerate(NUMPY_DTYPES):
        itemsize = np.dtype(numpy_dtype(dtype_name)).itemsize
        for op in (hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product):
            if dtype_name == "bool" and op == hvd.Average:
                continue
            # 1 element up to a full slot (each dtype's last op fills it)
            count = 128 // itemsize if op == hvd.Product else 1 + (seed + 3 * k + op) % (128 // itemsize)
            for i in range(3):
                xs = [rank_data(seed * 101 + k * 10 + op * 3 + i, q, (count,), dtype_name,
                                op == hvd.Product) for q in range(n)]
                name = f"slot.{dtype_name}.{op}"
                out = hvd.allreduce(xs[rank], op=op, name=name)
                rtol = 1e-2 if op == hvd.Average and dtype_name in ("float16", "bfloat16") else (
                    1e-6 if op == hvd.Average and dtype_name in ("float32", "float64") else 0)
                check_equal(out, reference(op, xs, dtype_name, n), dtype_name,
                            f"{name} call {i} (seed {seed})", rtol)
            calls += 2  # the first call of a name goes through the coordinator
    for dtype_name, op, pre, post in (("float64", hvd.Average, 0.5, 3.0),
                                      ("int32", hvd.Sum, 2.0, 3.0)):
        for i in range(3):
            xs = [rank_data(seed + 7 * i, q, (9,), dtype_name) for q in range(n)]
            out = hvd.allreduce(xs[rank], op=op, name=f"slot.scaled.{dtype_name}",
                                prescale_factor=pre, postscale_factor=post)
            total = sum(x.astype(np.float64) * pre for x in xs)
            ref = (total / n if op == hvd.Average else total) * post
            check_equal(out, ref.astype(xs[0].dtype), dtype_name, f"scaled {dtype_name} call {i}",
                        rtol=1e-12 if dtype_name == "float64" else 0)
        calls += 2
    assert rides() - before == calls, (f"{rides() - before} of the {calls} repeated small "
                                       f"synchronous all-reduces rode in the slot (seed {seed})")
    before = rides()
    for i in range(3):
        xs = [rank_data(seed + i, q, (33,), "float32") for q in range(n)]  # 132 bytes
        check_equal(hvd.allreduce(xs[rank], op=hvd.Sum, name="slot.too_big"), sum(xs),
                    "float32", f"132 bytes, call {i}")
        check_equal(hvd.allreduce(xs[rank][:4], op=hvd.Sum, name="slot.ring", algorithm="ring"),
                    sum(xs)[:4], "float32", f"ring, call {i}")
        handle = hvd.allreduce_async(xs[rank][:2], op=hvd.Sum, name="slot.async")
        check_equal(hvd.synchronize(handle), sum(xs)[:2], "float32", f"async, call {i}")
    assert rides() == before, f"{rides() - before} calls rode in the slot that must not"


def check_repeated_calls(seed, rank, n):
    """A synchronous all-reduce called again under its name (in place and not, every size class,
    new data and new arrays each call) runs from the request its first call built: only the
    first call of each goes the whole way (through Collectives._submit), every result is right,
    and a call whose array's shape or dtype differs goes the whole way again."""
    ops = hvd.ops._ops
    built = []
    submit = ops._submit
    ops._submit = lambda *a, **k: built.append(a[4]) or submit(*a, **k)
    try:
        for count in (0, 1, 7, 1021, 70001):  # 70001: past the slot, not divisible by 2, 3, 4
            for in_place in (False, True):
                name = f"repeat.{count}.{in_place}"
                for i in range(4):
                    xs = [rank_data(seed + 31 * i + count, q, (count,), "float64")
                          for q in range(n)]
                    mine = xs[rank].copy()
                    if in_place:
                        got = hvd.allreduce_(mine, op=hvd.Average, name=name,
                                             prescale_factor=2.0)
                        assert got is mine, "allreduce_ must return its own array"
                    else:
                        got = hvd.allreduce(mine, op=hvd.Average, name=name,
                                            prescale_factor=2.0)
                        assert got is not mine and np.array_equal(mine, xs[rank])
                    check_equal(got, 2 * sum(xs) / n, "float64", f"{name} call {i} (seed {seed})",
                                1e-12)
        assert sorted(set(built)) == sorted(built), f"repeated calls went the whole way: {built}"
        built.clear()
        # Same name, a different description each time: each goes the whole way; then the
        # first description again reuses its request.
        xs = [rank_data(seed, q, (6,), "int32") for q in range(n)]
        total = sum(xs)
        for variant, ref in ((xs[rank], total), (xs[rank][:3], total[:3]),
                             (xs[rank].astype(np.int64), total.astype(np.int64)),
                             (xs[rank], total)):
            check_equal(hvd.allreduce(variant, op=hvd.Sum, name="repeat.variant"), ref,
                        variant.dtype.name, f"variant {variant.dtype} {variant.shape}")
        assert len(built) == 3, f"{len(built)} calls went the whole way for 3 descriptions"
    finally:
        ops._submit = submit


def hvd_wakeups():
    return _core.hand_off_counts()["engine_thread_wakeups"]


if __name__ == "__main__":
    run_main(main)
