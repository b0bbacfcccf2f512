"""An argument error on one rank only: that rank raises ValueError at once, and the ranks that
submitted the same collective correctly get a CollectiveError naming it and the problem within
seconds instead of stalling. Covered: alltoall splits (a new name, and a name already in the
response cache), a broadcast root out of range, a retry under a rejected name, and the engine
keeps working afterwards."""
import time

import numpy as np

import fusecomm as hvd
from _util import run_main


def check_round(rank, n, bad_rank, name, good, bad, fragments):
    started = time.monotonic()
    if rank == bad_rank:
        try:
            bad()
            raise AssertionError(f"{name}: the invalid call was accepted on rank {rank}")
        except ValueError as e:
            assert all(f in str(e) for f in fragments), e
        return
    try:
        good()
        raise AssertionError(f"{name}: no error although rank {bad_rank}'s call was invalid")
    except hvd.CollectiveError as e:
        text = str(e)
    took = time.monotonic() - started
    assert f"'{name}' was rejected: rank {bad_rank} raised: " in text, text
    assert all(f in text for f in fragments), text
    assert took < 10, f"{name}: the error came after {took:.1f} s"


def main():
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    rows = np.arange(2 * n, dtype=np.float32).reshape(2 * n, 1) + 100 * rank
    good_splits = [2] * n
    bad_splits = [2] * (n - 1) + [3]  # sums to 2n + 1

    def good_a2a(name):
        return lambda: hvd.alltoall(rows, splits=good_splits, name=name)

    def bad_a2a(name):
        return lambda: hvd.alltoall(rows, splits=bad_splits, name=name)

    # A name never seen before: negotiated through the coordinator.
    check_round(rank, n, 1, "a2a.new", good_a2a("a2a.new"), bad_a2a("a2a.new"),
                ["alltoall splits sum to"])
    # A name in the response cache: the rejected request must invalidate the cached entry.
    out, received = hvd.alltoall(rows, splits=good_splits, name="a2a.cached")
    assert out.shape == (2 * n, 1) and list(received) == good_splits, (out, received)
    check_round(rank, n, n - 1, "a2a.cached", good_a2a("a2a.cached"), bad_a2a("a2a.cached"),
                ["alltoall splits sum to"])
    # Broadcast with a root out of range on rank 0 only.
    x = np.full(3, float(rank))
    check_round(rank, n, 0, "bcast", lambda: hvd.broadcast(x, root_rank=0, name="bcast"),
                lambda: hvd.broadcast(x, root_rank=n + 5, name="bcast"), ["out of range"])
    # A rejected name only rank 0 uses stays in flight there (the others might still submit
    # it); a retry under that name says so. It holds up nothing else.
    if rank == 0:
        for root, expected in ((n + 5, "out of range"), (0, "was rejected on this rank")):
            try:
                hvd.broadcast(x, root_rank=root, name="lonely")
                raise AssertionError("'lonely' was accepted")
            except ValueError as e:
                assert expected in str(e), e
    # Everything still works, the same names included.
    out, received = hvd.alltoall(rows, splits=good_splits, name="a2a.cached")
    expected = np.concatenate([np.arange(2 * n, dtype=np.float32)[2 * rank:2 * rank + 2] + 100 * q
                               for q in range(n)]).reshape(-1, 1)
    assert np.array_equal(out, expected), (out, expected)
    total = hvd.allreduce(np.full(2, rank + 1.0), op=hvd.Sum, name="after")
    assert total.tolist() == [n * (n + 1) / 2] * 2, total
    print(f"rank {rank}: OK", flush=True)


if __name__ == "__main__":
    run_main(main)
