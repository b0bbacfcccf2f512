"""Every collective of the NumPy API on every rank, checked element by element against a NumPy
reference built from every rank's (regenerated) data. Argument: a seed."""
import sys

import numpy as np

import fusecomm as hvd
from _util import NUMPY_DTYPES, SIZES, numpy_dtype, rank_data, run_main

REDUCERS = {
    hvd.Sum: lambda xs: _fold(np.add, xs),
    hvd.Min: lambda xs: _fold(np.minimum, xs),
    hvd.Max: lambda xs: _fold(np.maximum, xs),
    hvd.Product: lambda xs: _fold(np.multiply, xs),
}
BOOL_REDUCERS = {hvd.Sum: np.logical_or, hvd.Min: np.logical_and, hvd.Max: np.logical_or,
                 hvd.Product: np.logical_and}


def _fold(fn, xs):
    out = xs[0].copy()
    for x in xs[1:]:
        out = fn(out, x).astype(out.dtype)
    return out


def reference(op, xs, dtype_name, n):
    if dtype_name == "bool":
        return _fold(BOOL_REDUCERS[op], xs) if op != hvd.Average else None
    if op == hvd.Average:
        total = _fold(np.add, [x.astype(np.float64) for x in xs])
        if np.dtype(xs[0].dtype).kind in "iu":
            return np.trunc(total / n).astype(xs[0].dtype)
        return (total / n).astype(xs[0].dtype)
    return REDUCERS[op](xs)


def check_equal(out, ref, dtype_name, what, rtol=0.0):
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    if rtol:
        ok = np.allclose(out.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol)
    else:
        ok = np.array_equal(out, ref)
    if not ok:
        bad = np.flatnonzero(out.astype(np.float64).ravel() != ref.astype(np.float64).ravel())
        raise AssertionError(f"{what}: {bad.size} wrong elements, first at {bad[:5]}: "
                             f"{out.ravel()[bad[:5]]} vs {ref.ravel()[bad[:5]]}")


def test_allreduce(seed, rank, n, algorithms=("ring", "mpi", "auto"), sizes=SIZES):
    ops = [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product]
    checked = 0
    for algorithm in algorithms:
        for dtype_name in NUMPY_DTYPES:
            for op in ops:
                if dtype_name == "bool" and op == hvd.Average:
                    continue
                for size in sizes:
                    shape = (size,) if size % 2 else (size // 2, 2) if size else (0, 3)
                    key = seed * 7919 + size
                    xs = [rank_data(key, q, shape, dtype_name, op == hvd.Product)
                          for q in range(n)]
                    name = f"ar.{algorithm}.{dtype_name}.{op}.{size}"
                    out = hvd.allreduce(xs[rank], name=name, op=op, algorithm=algorithm)
                    rtol = 1e-2 if op == hvd.Average and dtype_name in ("float16", "bfloat16") else 0
                    if op == hvd.Average and dtype_name in ("float32", "float64"):
                        rtol = 1e-6
                    check_equal(out, reference(op, xs, dtype_name, n), dtype_name, name, rtol)
                    checked += 1
    return checked


def test_scaling(seed, rank, n):
    for dtype_name in ["float32", "float64", "float16", "int32"]:
        xs = [rank_data(seed, q, (101,), dtype_name) for q in range(n)]
        pre, post = (2.0, 3.0) if dtype_name == "int32" else (0.5, 3.0)
        out = hvd.allreduce(xs[rank], name=f"scale.{dtype_name}", op=hvd.Sum,
                            prescale_factor=pre, postscale_factor=post)
        ref = sum(x.astype(np.float64) * pre for x in xs) * post
        check_equal(out, ref.astype(xs[0].dtype), dtype_name, f"scale {dtype_name}",
                    rtol=1e-2 if dtype_name == "float16" else 0)
    # average= (deprecated Horovod argument) and the default op (Average)
    x = np.full(5, float(rank), np.float64)
    check_equal(hvd.allreduce(x, name="default_avg"), np.full(5, (n - 1) / 2), "f64", "default")
    check_equal(hvd.allreduce(x, average=False, name="avg_false"),
                np.full(5, float(sum(range(n)))), "f64", "average=False")


def test_fused_scaling(seed, rank, n):
    """Prescale and postscale on a fused group: the fusion buffer is scaled as one, so a
    factor applied to one member only, twice, or not at all shows here (not only through the
    frameworks' predivide)."""
    cases = [("float32", hvd.Sum, 0.5, 3.0), ("float32", hvd.Average, 0.25, 2.0),
             ("float64", hvd.Sum, 1.5, 0.5), ("float64", hvd.Average, 0.5, 3.0),
             ("float16", hvd.Sum, 0.5, 2.0), ("int32", hvd.Sum, 2.0, 3.0),
             ("int64", hvd.Sum, 3.0, 2.0)]
    for k, (dtype_name, op, pre, post) in enumerate(cases):
        sizes = [1, 7, 0, 31, 1021, 3]  # several members, an empty one among them
        xs = [[rank_data(seed * 31 + k * 8 + i, q, (c,), dtype_name) for q in range(n)]
              for i, c in enumerate(sizes)]
        name = f"fused_scale.{dtype_name}.{op}"
        outs = hvd.grouped_allreduce([x[rank] for x in xs], op=op, name=name,
                                     prescale_factor=pre, postscale_factor=post)
        for i, out in enumerate(outs):
            total = sum(x.astype(np.float64) * pre for x in xs[i]) * post
            ref = (total / n if op == hvd.Average else total).astype(xs[i][0].dtype)
            rtol = 1e-2 if dtype_name == "float16" else 1e-6 if op == hvd.Average else 0
            check_equal(out, ref, dtype_name, f"{name} member {i} (pre {pre}, post {post})",
                        rtol)


def test_in_place_and_grouped(seed, rank, n):
    x = rank_data(seed, rank, (33,), "float32")
    ref = sum(rank_data(seed, q, (33,), "float32") for q in range(n))
    y = x.copy()
    hvd.allreduce_(y, op=hvd.Sum, name="inplace")
    check_equal(y, ref, "float32", "allreduce_")
    tensors = [rank_data(seed + i, rank, (i,), "float64") for i in range(20)]
    outs = hvd.grouped_allreduce(tensors, op=hvd.Sum, name="grouped")
    for i, out in enumerate(outs):
        check_equal(out, sum(rank_data(seed + i, q, (i,), "float64") for q in range(n)),
                    "float64", f"grouped {i}")


def test_allgather(seed, rank, n):
    for dtype_name in NUMPY_DTYPES:
        for trailing in [(), (3,), (2, 2)]:
            rows = [int(np.random.default_rng([seed, q, 1]).integers(0, 5)) for q in range(n)]
            xs = [rank_data(seed, q, (rows[q],) + trailing, dtype_name) for q in range(n)]
            out = hvd.allgather(xs[rank], name=f"ag.{dtype_name}.{len(trailing)}")
            check_equal(out, np.concatenate(xs), dtype_name, f"allgather {dtype_name}")


def test_broadcast(seed, rank, n):
    for dtype_name in NUMPY_DTYPES:
        for size in [0, 1, 7, 4099]:
            root = int(np.random.default_rng([seed, size]).integers(0, n))
            xs = [rank_data(seed, q, (size,), dtype_name) for q in range(n)]
            out = hvd.broadcast(xs[rank], root, name=f"bc.{dtype_name}.{size}")
            check_equal(out, xs[root], dtype_name, f"broadcast root {root}")
            y = xs[rank].copy()
            hvd.broadcast_(y, root, name=f"bc_.{dtype_name}.{size}")
            check_equal(y, xs[root], dtype_name, "broadcast_")


def test_reducescatter(seed, rank, n):
    for dtype_name in ["float32", "float64", "int32", "int64", "float16"]:
        for rows in [0, 1, n, 2 * n + 1, 13]:
            for op in [hvd.Sum, hvd.Average, hvd.Max]:
                xs = [rank_data(seed, q, (rows, 3), dtype_name) for q in range(n)]
                out = hvd.reducescatter(xs[rank], op=op, name=f"rs.{dtype_name}.{rows}.{op}")
                full = reference(op, xs, dtype_name, n)
                start = sum(rows // n + (q < rows % n) for q in range(rank))
                mine = rows // n + (rank < rows % n)
                rtol = 1e-2 if dtype_name == "float16" and op == hvd.Average else 1e-6 * (op == hvd.Average)
                check_equal(out, full[start:start + mine], dtype_name, f"reducescatter {rows}", rtol)


def test_alltoall(seed, rank, n):
    rng = np.random.default_rng(seed)
    splits_all = rng.integers(0, 4, size=(n, n))  # splits_all[q][r]: rows q sends to r
    for dtype_name in ["float32", "int64", "uint8", "bool"]:
        xs = [rank_data(seed, q, (int(splits_all[q].sum()), 2), dtype_name) for q in range(n)]
        out, received = hvd.alltoall(xs[rank], splits=splits_all[rank], name=f"a2a.{dtype_name}")
        parts = []
        for q in range(n):
            offset = int(splits_all[q][:rank].sum())
            parts.append(xs[q][offset:offset + int(splits_all[q][rank])])
        check_equal(out, np.concatenate(parts), dtype_name, "alltoall")
        assert list(received) == [int(splits_all[q][rank]) for q in range(n)], received
    # equal splits
    x = np.arange(2 * n, dtype=np.int32) + 100 * rank
    out, received = hvd.alltoall(x, name="a2a.equal")
    check_equal(out, np.array([100 * q + 2 * rank + k for q in range(n) for k in range(2)],
                              np.int32), "int32", "alltoall equal")


def test_random_order(seed, rank, n):
    """Many named tensors submitted in a different order on every rank: the engine must
    agree on one order, fuse, and still give each tensor its own answer."""
    count = 100
    sizes = np.random.default_rng(seed).integers(0, 3000, size=count)
    order = np.random.default_rng([seed, rank]).permutation(count)
    handles = {}
    for i in order:
        handles[i] = hvd.allreduce_async(rank_data(seed + i, rank, (int(sizes[i]),), "float32"),
                                         name=f"order.{i}", op=hvd.Sum)
    for i in np.random.default_rng([seed, rank, 2]).permutation(count):
        out = hvd.synchronize(handles[i])
        ref = sum(rank_data(seed + i, q, (int(sizes[i]),), "float32") for q in range(n))
        check_equal(out, ref, "float32", f"order.{i}")


def test_objects_and_barrier(rank, n):
    hvd.barrier()
    obj = hvd.broadcast_object({"rank": rank, "list": list(range(rank + 3))}, root_rank=n - 1)
    assert obj == {"rank": n - 1, "list": list(range(n + 2))}, obj
    gathered = hvd.allgather_object(("r", rank))
    assert gathered == [("r", q) for q in range(n)], gathered


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    checked = test_allreduce(seed, rank, n)
    test_scaling(seed, rank, n)
    test_fused_scaling(seed, rank, n)
    test_in_place_and_grouped(seed, rank, n)
    test_allgather(seed, rank, n)
    test_broadcast(seed, rank, n)
    test_reducescatter(seed, rank, n)
    test_alltoall(seed, rank, n)
    test_random_order(seed, rank, n)
    test_objects_and_barrier(rank, n)
    hvd.shutdown()
    print(f"rank {rank}: OK ({checked} all-reduce cases)", flush=True)


if __name__ == "__main__":
    run_main(main)
