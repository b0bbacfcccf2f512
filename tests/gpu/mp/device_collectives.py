"""Every collective on CUDA tensors through fusecomm.torch, checked element by element on every
rank against a NumPy reference rebuilt from every rank's data: allreduce (every dtype and op,
sizes 0, 1, primes, not divisible by the rank count; one at a time and fused), Adasum (against
the pairwise formula of tests/mp/adasum_reference.py), broadcast from
every root, allgather and alltoall with uneven (and empty) parts, reducescatter with rows not
divisible by the rank count. Results must come back on the caller's GPU.

Run: mpirun -np N python tests/gpu/mp/device_collectives.py
(N ranks on fewer GPUs share them: fusecomm then stages through MPI; FUSECOMM_GPU_TRANSPORT and
FUSECOMM_ALLREDUCE_ALGORITHM pick the transport and algorithm.)"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "mp"))
from torch_util import (DTYPES, SIZES, all_ranks, expect_close, expect_equal,  # noqa: E402
                        rank_tensor, run_main, scatter_rows, setup)
from adasum_reference import adasum_tree  # noqa: E402

hvd, R, N, DEV = None, None, None, None
OPS = ["Sum", "Average", "Min", "Max", "Product"]


def reference(xs, op_name):
    """The reduction of CPU tensors xs (one per rank), in float64 / int64 then cast back."""
    dtype = xs[0].dtype
    if dtype == torch.bool:
        stack = torch.stack(xs)
        return stack.any(0) if op_name in ("Sum", "Max") else stack.all(0)
    wide = torch.stack([x.double() if dtype.is_floating_point else x.long() for x in xs])
    if op_name == "Sum":
        out = wide.sum(0)
    elif op_name == "Min":
        out = wide.min(0).values
    elif op_name == "Max":
        out = wide.max(0).values
    elif op_name == "Product":
        out = wide.prod(0)
    elif dtype.is_floating_point:
        out = wide.sum(0) / N
    else:
        out = torch.trunc(wide.sum(0).double() / N).long()
    return out.to(dtype)


def on_gpu(t):
    return t.to(DEV)


def check(actual, expected, what, close=False):
    assert actual.device == DEV, f"{what}: result on {actual.device}, not {DEV}"
    (expect_close if close else expect_equal)(actual.cpu(), expected, what)


def check_allreduce():
    pending = []
    for di, dtype in enumerate(DTYPES):
        for oi, op_name in enumerate(OPS):
            if dtype == torch.bool and op_name == "Average":
                continue
            for si, count in enumerate(SIZES[:9] + [3 * N + 1]):
                seed = [1, di, oi, si]
                x = on_gpu(rank_tensor(seed, R, (count,), dtype))
                pending.append((seed, count, dtype, op_name, x,
                                hvd.allreduce_async(x, op=getattr(hvd, op_name))))
    # Submitted together: same-kind tensors are fused (one batched copy-in/out per group).
    for seed, count, dtype, op_name, x, handle in pending:
        out = hvd.synchronize(handle)
        check(out, reference(all_ranks(seed, range(N), (count,), dtype), op_name),
              f"allreduce {op_name} {dtype} n={count}", close=op_name == "Average")
    # In place, scaled, grouped.
    for dtype in (torch.float32, torch.float16, torch.int64):
        x = on_gpu(rank_tensor([2], R, (31,), dtype))
        hvd.allreduce_(x, op=hvd.Sum, prescale_factor=2, postscale_factor=3)
        ref = sum(t.double() * 2 for t in all_ranks([2], range(N), (31,), dtype)) * 3
        check(x, ref.to(dtype), f"allreduce_ scaled {dtype}", close=dtype.is_floating_point)
    tensors = [on_gpu(rank_tensor([3, i], R, (n,), torch.float32)) for i, n in enumerate([0, 5, 1021])]
    outs = hvd.grouped_allreduce(tensors, op=hvd.Sum)
    for i, (n, out) in enumerate(zip([0, 5, 1021], outs)):
        check(out, reference(all_ranks([3, i], range(N), (n,), torch.float32), "Sum"),
              f"grouped_allreduce {i}")


def check_adasum():
    """op=Adasum on CUDA tensors (staged through host memory on every transport): one at a time
    and fused, zero-sized included, against the pairwise formula over the ranks' data."""
    pending = []
    for di, dtype in enumerate((torch.float16, torch.float32, torch.float64)):
        for count in (0, 1, 13, 3 * N + 1, 1021):
            seed = [8, di, count]
            x = on_gpu(rank_tensor(seed, R, (count,), dtype))
            pending.append((seed, count, dtype, hvd.allreduce_async(x, op=hvd.Adasum)))
    for seed, count, dtype, handle in pending:
        out = hvd.synchronize(handle)
        np_dtype = str(dtype).replace("torch.", "")
        want = adasum_tree([t.double().numpy() for t in all_ranks(seed, range(N), (count,),
                                                                   dtype)], np_dtype)
        check(out, torch.from_numpy(want), f"Adasum {dtype} n={count}", close=True)


def check_broadcast():
    for di, dtype in enumerate(DTYPES):
        for root in range(N):
            for count in (0, 1, 13, 1021):
                seed = [4, di, root, count]
                x = on_gpu(rank_tensor(seed, R, (count,), dtype))
                check(hvd.broadcast(x, root), rank_tensor(seed, root, (count,), dtype),
                      f"broadcast {dtype} root {root} n={count}")
                hvd.broadcast_(x, root)
                check(x, rank_tensor(seed, root, (count,), dtype), f"broadcast_ {dtype}")


def check_allgather():
    for di, dtype in enumerate(DTYPES):
        for tail in ((), (3,)):
            rows = lambda q: (q * 7 + di) % 4  # noqa: E731 - uneven, zeros included
            seed = [5, di, len(tail)]
            out = hvd.allgather(on_gpu(rank_tensor(seed + [R], R, (rows(R),) + tail, dtype)))
            expected = torch.cat([rank_tensor(seed + [q], q, (rows(q),) + tail, dtype)
                                  for q in range(N)])
            check(out, expected, f"allgather {dtype} {tail}")


def check_reducescatter():
    for di, dtype in enumerate(DTYPES):
        for op_name in OPS:
            if dtype == torch.bool and op_name == "Average":
                continue
            for rows in sorted({0, 1, N + 1, 2 * N + 1, 13}):
                seed = [6, di, OPS.index(op_name), rows]
                out = hvd.reducescatter(on_gpu(rank_tensor(seed, R, (rows, 3), dtype)),
                                        op=getattr(hvd, op_name))
                full = reference(all_ranks(seed, range(N), (rows, 3), dtype), op_name)
                start, count = scatter_rows(rows, N, R)
                check(out, full[start:start + count], f"reducescatter {op_name} {dtype} {rows}",
                      close=op_name == "Average")


def check_alltoall():
    def splits_of(q):
        return [(q + 2 * p + 1) % 3 for p in range(N)]

    for di, dtype in enumerate(DTYPES):
        seed = [7, di]
        x = on_gpu(rank_tensor(seed, R, (sum(splits_of(R)), 2), dtype))
        out, received = hvd.alltoall(x, splits=splits_of(R))
        parts = []
        for q in range(N):
            data = rank_tensor(seed, q, (sum(splits_of(q)), 2), dtype)
            start = sum(splits_of(q)[:R])
            parts.append(data[start:start + splits_of(q)[R]])
        check(out, torch.cat(parts), f"alltoall {dtype}")
        assert received.tolist() == [splits_of(q)[R] for q in range(N)], "alltoall splits"


def main():
    global hvd, R, N, DEV
    hvd, R, N = setup()
    torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
    DEV = torch.device("cuda", torch.cuda.current_device())
    for check_fn in (check_allreduce, check_adasum, check_broadcast, check_allgather,
                     check_reducescatter, check_alltoall):
        check_fn()
    # Work queued on the caller's stream before submission is seen by the collective.
    x = torch.zeros(1 << 20, device=DEV)
    x.add_(R + 1)  # on the current stream, possibly still running at submission
    out = hvd.allreduce(x, op=hvd.Sum)
    assert torch.all(out == N * (N + 1) / 2).item(), "stream ordering"
    hvd.shutdown()
    print(f"rank {R}: device collectives ok ({os.environ.get('FUSECOMM_GPU_TRANSPORT', 'auto')}, "
          f"{os.environ.get('FUSECOMM_ALLREDUCE_ALGORITHM', 'auto')})")


if __name__ == "__main__":
    run_main(main)
