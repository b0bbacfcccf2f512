"""fusecomm.torch collectives on every rank: every element of every result against a plain-torch
reference built from every rank's (regenerated) data, every dtype, empty/one/prime sizes,
in-place and non-contiguous tensors, grouped ops, gradients, process sets and errors.

Run: mpirun -np N python tests/mp/torch_ops.py   (N = 2, 3, 4)"""
import torch

from torch_util import (DTYPES, FLOATS, SIZES, all_ranks, expect_close, expect_equal,
                        expect_raises, rank_tensor, run_main, scatter_rows, setup)

hvd, R, N = None, None, None
OPS = ["Sum", "Average", "Min", "Max", "Product"]


def reduce_reference(tensors, op):
    """What op over the ranks' tensors must give, computed in int64 / float64."""
    stacked = torch.stack(tensors)
    dtype = stacked.dtype
    if dtype == torch.bool:
        return stacked.any(0) if op in (hvd.Sum, hvd.Max) else stacked.all(0)
    wide = stacked.double() if dtype.is_floating_point else stacked.long()
    if op == hvd.Sum:
        out = wide.sum(0)
    elif op == hvd.Average:
        total = wide.sum(0)
        # Integers average by truncating division, as Horovod's integer scaling does.
        out = total / len(tensors) if dtype.is_floating_point else \
            torch.div(total, len(tensors), rounding_mode="trunc")
    elif op == hvd.Min:
        out = wide.amin(0)
    elif op == hvd.Max:
        out = wide.amax(0)
    else:
        out = wide.prod(0)
    return out.to(dtype)


def check_allreduce():
    pending = []
    for di, dtype in enumerate(DTYPES):
        for oi, op_name in enumerate(OPS):
            op = getattr(hvd, op_name)
            if dtype == torch.bool and op == hvd.Average:
                continue
            shapes = [(s,) for s in SIZES] + [(3, 4, 5), ()]
            for si, shape in enumerate(shapes):
                seed = [1, di, oi, si]
                x = rank_tensor(seed, R, shape, dtype)
                pending.append((dtype, op_name, shape, seed, x.clone(),
                                hvd.allreduce_async(x, op=op)))
    assert all(isinstance(hvd.poll(p[-1]), bool) for p in pending)
    for dtype, op_name, shape, seed, original, handle in pending:
        out = hvd.synchronize(handle)
        expected = reduce_reference(all_ranks(seed, range(N), shape, dtype), getattr(hvd, op_name))
        what = f"allreduce {op_name} {dtype} {shape}"
        if op_name == "Average":
            expect_close(out, expected, what)
        else:
            expect_equal(out, expected, what)

    # Synchronous form, default op (Average), names, pre/post scaling.
    for dtype in FLOATS:
        x = rank_tensor([2], R, (31,), dtype)
        expected = reduce_reference(all_ranks([2], range(N), (31,), dtype), hvd.Average)
        expect_close(hvd.allreduce(x, name=f"default.{dtype}"), expected, f"allreduce {dtype}")
        expect_close(hvd.allreduce(x, average=False), reduce_reference(
            all_ranks([2], range(N), (31,), dtype), hvd.Sum), f"allreduce average=False {dtype}")
        scaled = hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.5, postscale_factor=3.0)
        ref = sum(t.double() * 0.5 for t in all_ranks([2], range(N), (31,), dtype)) * 3.0
        expect_close(scaled, ref.to(dtype), f"allreduce scaled {dtype}")
        scaled = hvd.allreduce(x, prescale_factor=0.5, postscale_factor=3.0)
        expect_close(scaled, (ref / N).to(dtype), f"allreduce scaled average {dtype}")
    for dtype in (torch.int32, torch.int64):
        x = rank_tensor([3], R, (13,), dtype)
        ref = sum(t.long() * 2 for t in all_ranks([3], range(N), (13,), dtype)) * 3
        expect_equal(hvd.allreduce(x, op=hvd.Sum, prescale_factor=2, postscale_factor=3),
                     ref.to(dtype), f"allreduce integer scaled {dtype}")

    # In place, contiguous and not: the result lands in the caller's tensor.
    for dtype in DTYPES:
        op = hvd.Max if dtype == torch.bool else hvd.Sum
        base = rank_tensor([4], R, (5, 7), dtype)
        expected = reduce_reference(all_ranks([4], range(N), (5, 7), dtype), op)
        view = base.t()  # non-contiguous
        assert hvd.allreduce_(view, op=op) is view
        expect_equal(view, expected.t(), f"allreduce_ non-contiguous {dtype}")
        expect_equal(base, expected, f"allreduce_ base of view {dtype}")
        flat = rank_tensor([4], R, (5, 7), dtype)
        handle = hvd.allreduce_async_(flat, op=op)
        assert hvd.synchronize(handle) is flat
        expect_equal(flat, expected, f"allreduce_async_ {dtype}")
        strided = rank_tensor([4], R, (5, 14), dtype)[:, ::2]
        before = strided.clone()
        out = hvd.allreduce(strided, op=op)
        assert out.is_contiguous()
        expect_equal(strided, before, f"allreduce input untouched {dtype}")
        ref = reduce_reference([t[:, ::2] for t in all_ranks([4], range(N), (5, 14), dtype)], op)
        expect_equal(out, ref, f"allreduce non-contiguous input {dtype}")


def check_grouped_allreduce():
    specs = [((0,), torch.float32), ((7,), torch.float64), ((3, 5), torch.int32),
             ((1021,), torch.bfloat16), ((13,), torch.uint8), ((2, 2), torch.float16)]

    def data(tag):
        return [rank_tensor([5, tag, i], R, shape, dtype) for i, (shape, dtype) in enumerate(specs)]

    def expected(tag, op):
        return [reduce_reference(all_ranks([5, tag, i], range(N), shape, dtype), op)
                for i, (shape, dtype) in enumerate(specs)]

    outs = hvd.grouped_allreduce(data(0), op=hvd.Sum)
    for i, (out, exp) in enumerate(zip(outs, expected(0, hvd.Sum))):
        expect_equal(out, exp, f"grouped_allreduce[{i}]")
    handle = hvd.grouped_allreduce_async(data(1), op=hvd.Max, name="grouped.max")
    outs = hvd.synchronize(handle)
    assert isinstance(outs, list) and len(outs) == len(specs)
    for i, (out, exp) in enumerate(zip(outs, expected(1, hvd.Max))):
        expect_equal(out, exp, f"grouped_allreduce_async[{i}]")
    tensors = data(2)
    results = hvd.grouped_allreduce_(tensors, op=hvd.Min)
    for i, (t, res, exp) in enumerate(zip(tensors, results, expected(2, hvd.Min))):
        assert res is t
        expect_equal(t, exp, f"grouped_allreduce_[{i}]")
    outs = hvd.grouped_allreduce(data(3))  # default Average
    for i, (out, exp) in enumerate(zip(outs, expected(3, hvd.Average))):
        expect_close(out, exp, f"grouped_allreduce average[{i}]")


def check_allgather():
    pending = []
    for di, dtype in enumerate(DTYPES):
        for k, base in enumerate([0, 1, 2, 7, 13, 1021]):
            rows = [0 if (q == 1 and k % 2) else base + q for q in range(N)]  # some ranks 0
            for shape_tail in [(), (3,)]:
                seed = [6, di, k, len(shape_tail)]
                shape = lambda q, rows=rows, tail=shape_tail: (rows[q],) + tail  # noqa: E731
                x = rank_tensor(seed, R, shape(R), dtype)
                pending.append((dtype, seed, rows, shape, hvd.allgather_async(x)))
    for dtype, seed, rows, shape, handle in pending:
        out = hvd.synchronize(handle)
        expected = torch.cat([rank_tensor(seed, q, shape(q), dtype) for q in range(N)])
        expect_equal(out, expected, f"allgather {dtype} rows {rows}")
    # The all-empty case and a synchronous call.
    out = hvd.allgather(torch.zeros(0, 4, dtype=torch.int64))
    expect_equal(out, torch.zeros(0, 4, dtype=torch.int64), "allgather all empty")
    outs = hvd.grouped_allgather([torch.full((R + 1,), R, dtype=torch.int32),
                                  torch.full((1, 2), float(R), dtype=torch.float64)])
    expect_equal(outs[0], torch.cat([torch.full((q + 1,), q, dtype=torch.int32)
                                     for q in range(N)]), "grouped_allgather[0]")
    expect_equal(outs[1], torch.arange(N, dtype=torch.float64).repeat_interleave(2).view(N, 2),
                 "grouped_allgather[1]")


def check_broadcast():
    pending = []
    for di, dtype in enumerate(DTYPES):
        for root in range(N):
            for k, count in enumerate([0, 1, 13, 1021, 65537]):
                seed = [7, di, root, k]
                x = rank_tensor(seed, R, (count,), dtype)
                pending.append((dtype, root, seed, count, x, x.clone(),
                                hvd.broadcast_async(x, root)))
    for dtype, root, seed, count, x, original, handle in pending:
        out = hvd.synchronize(handle)
        expect_equal(out, rank_tensor(seed, root, (count,), dtype),
                     f"broadcast {dtype} root {root} n {count}")
        expect_equal(x, original, "broadcast leaves its input alone")
    for dtype in DTYPES:
        root = N - 1
        x = rank_tensor([8], R, (4, 6), dtype)
        view = x[:, ::2]  # non-contiguous, in place
        assert hvd.broadcast_(view, root) is view
        expect_equal(view, rank_tensor([8], root, (4, 6), dtype)[:, ::2], f"broadcast_ {dtype}")
        mine = rank_tensor([8], R, (4, 6), dtype)
        expect_equal(x[:, 1::2], mine[:, 1::2], f"broadcast_ leaves other columns {dtype}")
        y = rank_tensor([9], R, (3,), dtype)
        assert hvd.synchronize(hvd.broadcast_async_(y, 0, name=f"bcast_.{dtype}")) is y
        expect_equal(y, rank_tensor([9], 0, (3,), dtype), f"broadcast_async_ {dtype}")
        expect_equal(hvd.broadcast(rank_tensor([10], R, (2, 3), dtype), root, name="b"),
                     rank_tensor([10], root, (2, 3), dtype), f"broadcast sync {dtype}")


def alltoall_splits(q, tag):
    """Rows rank q sends to each rank; zeros included."""
    return [(q + 2 * p + tag) % 3 for p in range(N)]


def alltoall_expected(seed, tag, dtype, tail):
    parts = []
    for q in range(N):
        splits = alltoall_splits(q, tag)
        data = rank_tensor(seed, q, (sum(splits),) + tail, dtype)
        start = sum(splits[:R])
        parts.append(data[start:start + splits[R]])
    return torch.cat(parts), torch.tensor([alltoall_splits(q, tag)[R] for q in range(N)],
                                          dtype=torch.int32)


def check_alltoall():
    for di, dtype in enumerate(DTYPES):
        for tag, tail in [(0, ()), (1, (3,)), (2, (2, 2))]:
            seed = [11, di, tag]
            splits = alltoall_splits(R, tag)
            x = rank_tensor(seed, R, (sum(splits),) + tail, dtype)
            expected, received = alltoall_expected(seed, tag, dtype, tail)
            out, got = hvd.alltoall(x, splits=splits)  # splits given: (tensor, splits)
            expect_equal(out, expected, f"alltoall {dtype} {tail}")
            expect_equal(got, received, f"alltoall received splits {dtype}")
            out, got = hvd.synchronize(hvd.alltoall_async(x, torch.tensor(splits)))
            expect_equal(out, expected, f"alltoall_async tensor splits {dtype}")
            expect_equal(got, received, f"alltoall_async received splits {dtype}")
        # Without splits: equal parts, and only the tensor comes back.
        x = rank_tensor([12, di], R, (2 * N, 3), dtype)
        out = hvd.alltoall(x)
        assert isinstance(out, torch.Tensor)
        expected = torch.cat([rank_tensor([12, di], q, (2 * N, 3), dtype)[2 * R:2 * R + 2]
                              for q in range(N)])
        expect_equal(out, expected, f"alltoall equal split {dtype}")


def check_reducescatter():
    pending = []
    row_counts = sorted({0, 1, N - 1, N, 2 * N + 1, 13, 1021})
    for di, dtype in enumerate(DTYPES):
        for op_name in OPS:
            op = getattr(hvd, op_name)
            if dtype == torch.bool and op == hvd.Average:
                continue
            for rows in row_counts:
                seed = [13, di, OPS.index(op_name), rows]
                x = rank_tensor(seed, R, (rows, 3), dtype)
                pending.append((dtype, op_name, rows, seed, hvd.reducescatter_async(x, op=op)))
    for dtype, op_name, rows, seed, handle in pending:
        out = hvd.synchronize(handle)
        full = reduce_reference(all_ranks(seed, range(N), (rows, 3), dtype), getattr(hvd, op_name))
        start, count = scatter_rows(rows, N, R)
        what = f"reducescatter {op_name} {dtype} rows {rows}"
        (expect_close if op_name == "Average" else expect_equal)(
            out, full[start:start + count], what)
    # Default op is Average; grouped form.
    x = rank_tensor([14], R, (2 * N + 1, 2), torch.float32)
    start, count = scatter_rows(2 * N + 1, N, R)
    full = reduce_reference(all_ranks([14], range(N), (2 * N + 1, 2), torch.float32), hvd.Average)
    expect_close(hvd.reducescatter(x), full[start:start + count], "reducescatter default")
    outs = hvd.grouped_reducescatter([x, x.double() * 2], op=hvd.Sum)
    full = reduce_reference(all_ranks([14], range(N), (2 * N + 1, 2), torch.float32), hvd.Sum)
    expect_equal(outs[0], full[start:start + count], "grouped_reducescatter[0]")
    expect_equal(outs[1], (full.double() * 2)[start:start + count], "grouped_reducescatter[1]")


def check_gradients():
    f64 = torch.float64

    def upstream(tag, shape, rank=None):
        return rank_tensor([20, tag], R if rank is None else rank, shape, f64)

    # allreduce: the gradient is the allreduce of the upstream gradients with the same op/scales.
    for op, combine in [(hvd.Sum, sum), (hvd.Average, lambda g: sum(g) / N)]:
        x = rank_tensor([21], R, (4, 3), f64).requires_grad_()
        y = hvd.allreduce(x, op=op, prescale_factor=2.0, postscale_factor=0.25)
        (y * upstream(1, (4, 3))).sum().backward()
        expected = combine([upstream(1, (4, 3), q) for q in range(N)]) * 0.5
        expect_close(x.grad, expected, f"allreduce grad op {op}", rtol=1e-12)

    # allgather: this rank's rows of the averaged upstream gradient.
    rows = [q + 1 for q in range(N)]
    x = rank_tensor([22], R, (rows[R], 3), f64).requires_grad_()
    y = hvd.allgather(x)
    (y * upstream(2, (sum(rows), 3))).sum().backward()
    mean = sum(upstream(2, (sum(rows), 3), q) for q in range(N)) / N
    expect_close(x.grad, mean[sum(rows[:R]):sum(rows[:R + 1])], "allgather grad", rtol=1e-12)

    # broadcast: the averaged upstream gradient on the root, zero elsewhere.
    root = N - 1
    x = rank_tensor([23], R, (5,), f64).requires_grad_()
    (hvd.broadcast(x, root) * upstream(3, (5,))).sum().backward()
    mean = sum(upstream(3, (5,), q) for q in range(N)) / N
    expect_close(x.grad, mean if R == root else torch.zeros(5, dtype=f64), "broadcast grad",
                 rtol=1e-12)

    # alltoall: the upstream gradient travels back along the received splits.
    splits = alltoall_splits(R, 1)
    x = rank_tensor([24], R, (sum(splits), 2), f64).requires_grad_()
    y, received = hvd.alltoall(x, splits=splits)
    (y * upstream(4, tuple(y.shape))).sum().backward()
    expected = []
    for p in range(N):
        into = [alltoall_splits(q, 1)[p] for q in range(N)]  # what p received from each rank
        g_p = upstream(4, (sum(into), 2), p)
        start = sum(into[:R])
        expected.append(g_p[start:start + splits[p]])
    expect_equal(x.grad, torch.cat(expected), "alltoall grad")
    x = rank_tensor([25], R, (N, 2), f64).requires_grad_()
    y = hvd.alltoall(x)
    (y * upstream(5, (N, 2))).sum().backward()
    expect_equal(x.grad, torch.stack([upstream(5, (N, 2), p)[R] for p in range(N)]),
                 "alltoall grad without splits")

    # reducescatter: the allgathered upstream gradient, times size for Sum (Horovod).
    rows_total = 2 * N + 1
    for op, factor in [(hvd.Sum, N), (hvd.Average, 1)]:
        x = rank_tensor([26], R, (rows_total, 2), f64).requires_grad_()
        y = hvd.reducescatter(x, op=op)
        (y * upstream(6, tuple(y.shape))).sum().backward()
        gathered = torch.cat([upstream(6, (scatter_rows(rows_total, N, q)[1], 2), q)
                              for q in range(N)])
        expect_close(x.grad, gathered * factor, f"reducescatter grad op {op}", rtol=1e-12)

    # Grouped forms.
    xs = [rank_tensor([27, i], R, (3,), f64).requires_grad_() for i in range(2)]
    ys = hvd.grouped_allreduce(xs, op=hvd.Sum)
    sum(((y * upstream(7 + i, (3,))).sum() for i, y in enumerate(ys))).backward()
    for i, x in enumerate(xs):
        expect_close(x.grad, sum(upstream(7 + i, (3,), q) for q in range(N)),
                     f"grouped_allreduce grad {i}", rtol=1e-12)
    xs = [rank_tensor([28, i], R, (R + i, 2), f64).requires_grad_() for i in range(2)]
    ys = hvd.grouped_allgather(xs)
    sum(((y * upstream(9 + i, tuple(y.shape))).sum() for i, y in enumerate(ys))).backward()
    for i, x in enumerate(xs):
        rows = [q + i for q in range(N)]
        mean = sum(upstream(9 + i, (sum(rows), 2), q) for q in range(N)) / N
        expect_close(x.grad, mean[sum(rows[:R]):sum(rows[:R + 1])], f"grouped_allgather grad {i}",
                     rtol=1e-12)
    xs = [rank_tensor([29, i], R, (N + i, 2), f64).requires_grad_() for i in range(2)]
    ys = hvd.grouped_reducescatter(xs, op=hvd.Sum)
    sum(((y * upstream(11 + i, tuple(y.shape))).sum() for i, y in enumerate(ys))).backward()
    for i, x in enumerate(xs):
        gathered = torch.cat([upstream(11 + i, (scatter_rows(N + i, N, q)[1], 2), q)
                              for q in range(N)])
        expect_close(x.grad, gathered * N, f"grouped_reducescatter grad {i}", rtol=1e-12)

    # Compression: the wire carries float16, the caller gets its own dtype back.
    x = (rank_tensor([30], R, (9,), torch.float32) / 3).requires_grad_()
    y = hvd.allreduce(x, op=hvd.Sum, compression=hvd.Compression.fp16)
    assert y.dtype == torch.float32
    expected = sum((rank_tensor([30], q, (9,), torch.float32) / 3).half().float()
                   for q in range(N))
    # Each fp16 addition on the wire rounds at the scale of its partial sum (up to N times the
    # largest input), so a sum that cancels to near zero is only that close, whatever the order.
    largest = max(float((rank_tensor([30], q, (9,), torch.float32) / 3).abs().max())
                  for q in range(N))
    expect_close(y.detach(), expected.half().float(), "allreduce fp16 compression", rtol=2e-3,
                 atol=(N - 1) * N * largest * 2.0 ** -11)
    y.sum().backward()
    expect_close(x.grad, torch.full((9,), float(N)), "fp16 compression grad", rtol=2e-3)


def make_process_sets():
    """Even and odd ranks (1-rank sets on 2 ranks), plus a 1-rank set on 4 ranks."""
    even = hvd.add_process_set(hvd.ProcessSet(list(range(0, N, 2))))
    odd = hvd.add_process_set(list(range(1, N, 2)))
    single = hvd.add_process_set([N - 1]) if N == 4 else None
    return even, odd, single


def check_process_sets():
    even, odd, single = make_process_sets()
    mine, other = (even, odd) if R % 2 == 0 else (odd, even)
    members = mine.ranks
    assert mine.included() and not other.included() and mine.rank() == members.index(R)
    assert mine.size() == len(members)
    # A global collective in flight while both sets run theirs: the sets are independent.
    global_handle = hvd.allreduce_async(torch.full((3,), float(R)), op=hvd.Sum, name="global")
    for di, dtype in enumerate(DTYPES):
        op = hvd.Max if dtype == torch.bool else hvd.Sum
        seed = [40, di]
        x = rank_tensor(seed, R, (13,), dtype)
        expect_equal(hvd.allreduce(x, op=op, name="ps.allreduce", process_set=mine),
                     reduce_reference(all_ranks(seed, members, (13,), dtype), op),
                     f"process set allreduce {dtype}")
        rows = lambda q: q + 1  # noqa: E731
        g = hvd.allgather(rank_tensor(seed, R, (rows(R), 2), dtype), process_set=mine)
        expect_equal(g, torch.cat([rank_tensor(seed, q, (rows(q), 2), dtype) for q in members]),
                     f"process set allgather {dtype}")
        root = members[-1]  # a global rank, as in Horovod
        b = hvd.broadcast(rank_tensor(seed, R, (7,), dtype), root, process_set=mine)
        expect_equal(b, rank_tensor(seed, root, (7,), dtype), f"process set broadcast {dtype}")
        x = rank_tensor(seed, R, (2 * len(members), 3), dtype)
        out = hvd.alltoall(x, process_set=mine)
        sr = mine.rank()
        expected = torch.cat([rank_tensor(seed, q, (2 * len(members), 3), dtype)[2 * sr:2 * sr + 2]
                              for q in members])
        expect_equal(out, expected, f"process set alltoall {dtype}")
        rows_total = 2 * len(members) + 1
        x = rank_tensor(seed, R, (rows_total, 2), dtype)
        out = hvd.reducescatter(x, op=op, process_set=mine)
        start, count = scatter_rows(rows_total, len(members), sr)
        full = reduce_reference(all_ranks(seed, members, (rows_total, 2), dtype), op)
        expect_equal(out, full[start:start + count], f"process set reducescatter {dtype}")
    outs = hvd.grouped_allreduce([torch.ones(2) * R, torch.ones(3, dtype=torch.int64) * R],
                                 op=hvd.Sum, process_set=mine)
    expect_equal(outs[1], torch.full((3,), sum(members), dtype=torch.int64), "ps grouped")
    hvd.barrier(process_set=mine)
    # Gradient through a set-local allgather uses the rank within the set.
    x = torch.full((mine.rank() + 1, 2), float(R), dtype=torch.float64, requires_grad=True)
    hvd.allgather(x, process_set=mine).sum().backward()
    expect_equal(x.grad, torch.ones_like(x), "process set allgather grad")
    x = torch.full((3,), float(R), dtype=torch.float64, requires_grad=True)
    hvd.broadcast(x, members[-1], process_set=mine).sum().backward()
    expect_equal(x.grad, torch.full((3,), 1.0 if R == members[-1] else 0.0, dtype=torch.float64),
                 "process set broadcast grad")
    outsider = other.ranks[0] if other.ranks else None
    if outsider is not None:
        expect_raises(ValueError, lambda: hvd.broadcast(x, outsider, process_set=mine),
                      "not in process set")
    expect_equal(hvd.synchronize(global_handle), torch.full((3,), float(sum(range(N)))),
                 "global allreduce beside process sets")
    # A set this rank is not in.
    expect_raises(ValueError, lambda: hvd.allreduce(torch.ones(1), process_set=other),
                  "not a member")
    if single is not None and single.included():
        x = torch.arange(5.0)
        expect_equal(hvd.allreduce(x, process_set=single), x, "1-rank set allreduce")
        expect_equal(hvd.allgather(x, process_set=single), x, "1-rank set allgather")
        expect_equal(hvd.broadcast(x, N - 1, process_set=single), x, "1-rank set broadcast")
    hvd.barrier()
    for ps in (even, odd, single):
        if ps is not None:
            assert hvd.remove_process_set(ps)
    expect_raises(ValueError, lambda: hvd.allreduce(torch.ones(1), process_set=mine), "added")


def check_errors():
    # Shapes and dtypes that differ between ranks fail on every rank, naming the tensor.
    e = expect_raises(hvd.HorovodInternalError,
                      lambda: hvd.allreduce(torch.zeros(R + 1), name="shape.mismatch"),
                      "shape.mismatch")
    assert isinstance(e, RuntimeError)
    dtype = torch.float32 if R == 0 else torch.float64
    expect_raises(hvd.HorovodInternalError,
                  lambda: hvd.allreduce(torch.zeros(3, dtype=dtype), name="dtype.mismatch"),
                  "dtype.mismatch")
    # The same name twice in flight on one rank. Rank 0's first request cannot complete before
    # the other ranks submit theirs, which they do only after the barrier rank 0 reaches once
    # its second submission was refused.
    if R == 0:
        handle = hvd.allreduce_async(torch.ones(2), name="dup")
        expect_raises(ValueError, lambda: hvd.allreduce_async(torch.ones(2), name="dup"),
                      "already in flight")
        hvd.barrier()
        expect_equal(hvd.synchronize(handle), torch.ones(2), "first of a duplicate name")
    else:
        hvd.barrier()
        hvd.allreduce(torch.ones(2), name="dup")
    expect_raises(ValueError, lambda: hvd.broadcast(torch.ones(1), N), "root rank")
    expect_raises(ValueError, lambda: hvd.alltoall(torch.ones(N + 1)), "divide")
    expect_raises(ValueError, lambda: hvd.alltoall(torch.ones(2), splits=[2]), "one per rank")
    # The engine still works after the failures.
    expect_equal(hvd.allreduce(torch.ones(3), op=hvd.Sum), torch.full((3,), float(N)), "after")


def main():
    global hvd, R, N
    hvd, R, N = setup()
    check_allreduce()
    check_grouped_allreduce()
    check_allgather()
    check_broadcast()
    check_alltoall()
    check_reducescatter()
    check_gradients()
    check_process_sets()
    check_errors()
    hvd.barrier()
    print(f"[rank {R}] torch_ops OK on {N} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
