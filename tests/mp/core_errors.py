"""Ranks that disagree get the same clear error on every rank, and the engine keeps working."""
import numpy as np

import fusecomm as hvd
from _util import run_main


def expect_error(fn, *fragments):
    try:
        fn()
    except hvd.CollectiveError as e:
        text = str(e)
        for fragment in fragments:
            assert fragment in text, f"{fragment!r} not in error: {text}"
        return text
    raise AssertionError(f"no CollectiveError; expected one with {fragments}")


def still_works(rank, n, tag):
    out = hvd.allreduce(np.full(3, rank, np.int64), op=hvd.Sum, name=f"after.{tag}")
    assert out.tolist() == [sum(range(n))] * 3, out


def main():
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    others = ", ".join(str(q) for q in range(1, n))
    rank_word = "rank" if n == 2 else "ranks"

    # Shapes: rank 0 differs from the others.
    shape = (3, 4) if rank == 0 else (4,)
    text = expect_error(lambda: hvd.allreduce(np.zeros(shape), name="shape_x"),
                        "Mismatched allreduce shapes for tensor 'shape_x'",
                        "rank 0 sent [3, 4]", f"{rank_word} {others} sent [4]")
    still_works(rank, n, "shape")

    # Data types.
    dtype = np.float32 if rank % 2 == 0 else np.float64
    expect_error(lambda: hvd.allreduce(np.zeros(5, dtype), name="dtype_x"),
                 "Mismatched allreduce data types for tensor 'dtype_x'", "float32", "float64")
    still_works(rank, n, "dtype")

    # Reduce ops.
    op = hvd.Sum if rank == 0 else hvd.Max
    expect_error(lambda: hvd.allreduce(np.zeros(5), op=op, name="op_x"),
                 "Mismatched allreduce reduce ops for tensor 'op_x'", "Sum", "Max")
    still_works(rank, n, "op")

    # Broadcast roots.
    expect_error(lambda: hvd.broadcast(np.zeros(2), root_rank=rank % 2, name="root_x"),
                 "Mismatched broadcast root ranks for tensor 'root_x'")
    still_works(rank, n, "root")

    # Operations under one name.
    def mixed():
        if rank == 0:
            return hvd.allgather(np.zeros(2), name="mixed_x")
        return hvd.allreduce(np.zeros(2), name="mixed_x")

    expect_error(mixed, "Mismatched allgather operations for tensor 'mixed_x'",
                 "allgather", "allreduce")
    still_works(rank, n, "mixed")

    # A cached name whose shape changes on one rank only: the cache entry is invalidated on
    # every rank and the renegotiation reports the mismatch.
    for step in range(3):
        hvd.allreduce(np.ones(6), name="cached_x")
    shape = (7,) if rank == n - 1 else (6,)
    expect_error(lambda: hvd.allreduce(np.ones(shape), name="cached_x"),
                 "Mismatched allreduce shapes for tensor 'cached_x'")
    out = hvd.allreduce(np.ones(6), op=hvd.Sum, name="cached_x")
    assert out.tolist() == [float(n)] * 6
    # ... and a shape change on every rank renegotiates cleanly.
    out = hvd.allreduce(np.ones(9), op=hvd.Sum, name="cached_x")
    assert out.tolist() == [float(n)] * 9

    # A cached name whose data type, reduce op or scale factors change on one rank only: a
    # cache hit must compare the whole spec, not just the shape, or the ranks would silently
    # run different reductions (a mix of Sum and Max).
    changes = [
        ("data types", {"dtype": np.float32}, ("float32", "float64")),
        ("reduce ops", {"op": hvd.Max}, ("Sum", "Max")),
        ("scale factors", {"prescale_factor": 2.0}, ()),
        ("scale factors", {"postscale_factor": 0.5}, ()),
    ]
    for field, change, values in changes:
        name = f"cached_{field.replace(' ', '_')}_{sorted(change)[0]}"
        for step in range(3):  # the first negotiates; the next ones hit the cache
            out = hvd.allreduce(np.full(5, rank + 1.0), op=hvd.Sum, name=name)
            assert out.tolist() == [n * (n + 1) / 2] * 5, (name, step, out)
        mine = dict(change) if rank == n - 1 else {}
        x = np.full(5, rank + 1.0, mine.pop("dtype", np.float64))
        expect_error(lambda: hvd.allreduce(x, name=name, **{"op": hvd.Sum, **mine}),
                     f"Mismatched allreduce {field} for tensor '{name}'", *values)
        # The entry is renegotiated: the same call on every rank is exact again.
        out = hvd.allreduce(np.full(5, rank + 1.0), op=hvd.Sum, name=name)
        assert out.tolist() == [n * (n + 1) / 2] * 5, (name, out)

    # Allgather with differing trailing dimensions.
    trailing = (2,) if rank == 0 else (3,)
    expect_error(lambda: hvd.allgather(np.zeros((1,) + trailing), name="ag_x"),
                 "Mismatched allgather shapes for tensor 'ag_x'")

    # A name already in flight on this rank is refused at once, locally.
    h = hvd.allreduce_async(np.ones(2), name="busy")
    try:
        hvd.allreduce_async(np.ones(2), name="busy")
        raise AssertionError("duplicate in-flight name accepted")
    except ValueError as e:
        assert "already in flight" in str(e), e
    assert hvd.synchronize(h).tolist() == [1.0, 1.0]
    still_works(rank, n, "end")
    hvd.shutdown()
    print(f"rank {rank}: OK", flush=True)


if __name__ == "__main__":
    run_main(main)
