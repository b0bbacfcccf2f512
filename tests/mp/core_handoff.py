"""The hand-off between callers and the engine thread. Argument: the seed.

Waiting callers run their process set's cycles themselves while the engine thread is idle, and
on a one-rank set a submission completes on the submitting thread. Here several Python threads
per rank mix synchronous all-reduces (the caller drives the cycle), asynchronous ones waited on
later (the engine thread runs them while the caller computes) and one grouped submission, on the
global set and on a sub-set, so that callers and engine threads race for the cycles; every
result is checked against NumPy. On a one-rank set an asynchronous all-reduce is done before
synchronize() is called."""
import sys
import threading

import numpy as np

import fusecomm as hvd
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
    hvd.barrier()
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
