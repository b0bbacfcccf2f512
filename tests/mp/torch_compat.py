"""Horovod compatibility of fusecomm.torch (and the NumPy face it shares a core with) on 2-4
ranks, checked against plain torch / NumPy references built from every rank's data:

- unnamed grouped ops on a process set some ranks are not in leave the global names alone;
- join(): an allreduce submitted just before join() runs before join() returns (the joined
  ranks contributing zeros), also in a loop whose first-joining rank changes every iteration,
  and Horovod's own join test pattern (test_horovod_join_allreduce);
- a mismatch found after rank 0 has joined names the tensor (3+ ranks);
- Horovod's gradient conventions, with the expected values of Horovod's own tests
  (test_horovod_allgather_grad, _broadcast_grad, _reducescatter_grad, _grad_average);
- broadcast_optimizer_state gives a fresh optimizer's parameters zero grads (a following
  broadcast(p.grad) works) and syncs Adam's state;
- int16 (and uint16) tensors in every collective, broadcast_parameters,
  broadcast_optimizer_state and DistributedOptimizer;
- PartialDistributedOptimizer: local layers keep their own values, the rest is averaged.

Run: mpirun -np N python tests/mp/torch_compat.py   (N = 2, 3, 4)"""
import sys
import time

import numpy as np
import torch

import fusecomm
from torch_util import expect_close, expect_equal, expect_raises, rank_tensor, run_main, setup

hvd, R, N = None, None, None
INT16 = [torch.int16] + ([torch.uint16] if hasattr(torch, "uint16") else [])


def check_grouped_names_on_process_set():
    """Issue 13: an unnamed grouped op on a set must not advance the members' global counter."""
    ps = hvd.add_process_set(list(range(N - 1)))
    if ps.included():
        fusecomm.grouped_allreduce([np.ones(3), np.ones(2)], op=fusecomm.Sum, process_set=ps)
        fusecomm.grouped_allgather([np.ones((1, 2))], process_set=ps)
        fusecomm.grouped_reducescatter([np.ones((N - 1, 2))], process_set=ps)
        hvd.grouped_allreduce([torch.ones(3)], op=hvd.Sum, process_set=ps)
    # The next unnamed global ops must get the same names on every rank (a stall otherwise).
    total = float(sum(q + 1 for q in range(N)))
    out = fusecomm.allreduce(np.full(4, R + 1.0), op=fusecomm.Sum)
    assert out.tolist() == [total] * 4, out
    outs = fusecomm.grouped_allreduce([np.full(2, R + 1.0)], op=fusecomm.Sum)
    assert outs[0].tolist() == [total] * 2, outs
    gathered = fusecomm.allgather(np.full((1, 1), R))
    assert gathered.ravel().tolist() == list(range(N)), gathered
    expect_equal(hvd.allreduce(torch.full((3,), R + 1.0), op=hvd.Sum),
                 torch.full((3,), total), "torch allreduce after grouped ops on a set")
    hvd.remove_process_set(ps)


def check_allreduce_just_before_join():
    """The last rank submits an allreduce and joins at once (usually the same engine cycle):
    the allreduce must run, with the joined ranks' zeros, before join() returns."""
    for it in range(3 * N):
        last = it % N
        x = torch.arange(5, dtype=torch.float64) * (it + 1) + last
        if R == last:
            handle = hvd.allreduce_async(x, name=f"before.join.{it % 2}", op=hvd.Sum)
            ret = hvd.join()
            expect_equal(hvd.synchronize(handle), x, f"iteration {it}: allreduce before join")
        else:
            ret = hvd.join()
        rets = hvd.allgather_object(ret, name=f"before.join.ret.{it}")
        assert rets == [ret] * N and 0 <= ret < N, (it, rets)


def check_join_loop_changing_rank():
    """Issue 13's loop: every iteration one rank joins first; the others submit an allreduce,
    join right away and synchronize after. Each allreduce sums the non-joined ranks' data."""
    for it in range(4 * N):
        first = it % N
        x = torch.full((6,), float(R + 1) * (it + 1), dtype=torch.float32)
        if R == first:
            ret = hvd.join()
        else:
            handle = hvd.allreduce_async(x, name="loop.a", op=hvd.Sum)
            ret = hvd.join()
            expected = sum(float(q + 1) * (it + 1) for q in range(N) if q != first)
            expect_equal(hvd.synchronize(handle), torch.full((6,), expected),
                         f"iteration {it} (first to join: {first})")
        rets = hvd.allgather_object(ret, name=f"loop.ret.{it}")
        assert rets == [ret] * N, (it, rets)


def check_horovod_join_allreduce():
    """Horovod's test_horovod_join_allreduce: first_join_rank joins; the others average two
    tensors (cached or not) and join. Average divides by the full size."""
    for first in range(min(N, 2)):
        for caching in (False, True):
            torch.manual_seed(1234)
            a = torch.FloatTensor(*([5] * 2)).random_(-100, 100)
            b = torch.FloatTensor(*([5] * 3)).random_(-100, 100)
            name = f"hvdjoin.{first}.{int(caching)}"
            if caching:
                hvd.synchronize(hvd.allreduce_async(a, name=f"{name}.a", op=hvd.Average))
                hvd.synchronize(hvd.allreduce_async(b, name=f"{name}.b", op=hvd.Average))
            if R == first:
                ret = hvd.join()
            else:
                ha = hvd.allreduce_async(a, name=f"{name}.a", op=hvd.Average)
                hb = hvd.allreduce_async(b, name=f"{name}.b", op=hvd.Average)
                avg_a, avg_b = hvd.synchronize(ha), hvd.synchronize(hb)
                ret = hvd.join()
                expect_close(avg_a, a * (N - 1) / N, f"join Average a ({name})", rtol=1e-6)
                expect_close(avg_b, b * (N - 1) / N, f"join Average b ({name})", rtol=1e-6)
                assert ret != first, (name, ret)
            assert hvd.allgather_object(ret, name=f"{name}.ret") == [ret] * N


def check_mismatch_after_rank0_joined():
    if N < 3:
        return  # one non-joined rank cannot disagree with anyone
    if R == 0:
        hvd.join()
        return
    e = expect_raises(hvd.HorovodInternalError,
                      lambda: hvd.allreduce(torch.zeros(R), name="after.join.mismatch"),
                      "Mismatched", "'allreduce.after.join.mismatch'")
    assert "''" not in str(e), e
    hvd.join()


def check_horovod_gradients():
    """The expected values of Horovod 0.28's own gradient tests (test/parallel/test_torch.py),
    which hold identically in its TensorFlow tests."""
    for dtype in (torch.float32, torch.float64):
        for dim in (1, 2, 3):
            # test_horovod_allgather_grad: upstream rows of rank r are r: grad = ones * rank.
            sizes = [17, 32, 81, 12, 15, 23, 22][:N]
            x = (torch.ones([sizes[R]] + [17] * (dim - 1)) * R).to(dtype).requires_grad_()
            grad_ys = torch.cat([torch.ones([s] + [17] * (dim - 1)) * r
                                 for r, s in enumerate(sizes)]).to(dtype)
            hvd.allgather(x).backward(grad_ys)
            expect_equal(x.grad, (torch.ones([sizes[R]] + [17] * (dim - 1)) * R).to(dtype),
                         f"Horovod allgather grad {dtype} dim {dim}")
            # test_horovod_broadcast_grad: ones on the root, zeros elsewhere.
            for root in range(N):
                x = (torch.ones([5] * dim) * R).to(dtype).requires_grad_()
                hvd.broadcast(x, root).backward(torch.ones([5] * dim, dtype=dtype))
                expect_equal(x.grad, torch.ones([5] * dim, dtype=dtype) * (R == root),
                             f"Horovod broadcast grad {dtype} dim {dim} root {root}")
            # test_horovod_reducescatter_grad(_average): ones * size for Sum, ones for Average.
            for op, factor in ((hvd.Sum, N), (hvd.Average, 1)):
                torch.manual_seed(1234)
                x = torch.FloatTensor(*([N * 4] * dim)).random_(-100, 100).to(dtype)
                x.requires_grad_()
                y = hvd.reducescatter(x, op=op)
                y.backward(torch.ones([4] + [N * 4] * (dim - 1), dtype=dtype))
                expect_equal(x.grad, torch.ones([N * 4] * dim, dtype=dtype) * factor,
                             f"Horovod reducescatter grad op {op} {dtype} dim {dim}")
            xs = [torch.ones([N * 4] * dim, dtype=dtype, requires_grad=True) for _ in range(3)]
            for y in hvd.grouped_reducescatter(xs, op=hvd.Sum):
                y.backward(torch.ones([4] + [N * 4] * (dim - 1), dtype=dtype))
            for i, x in enumerate(xs):
                expect_equal(x.grad, torch.ones([N * 4] * dim, dtype=dtype) * N,
                             f"Horovod grouped_reducescatter grad {i} {dtype} dim {dim}")


def check_optimizer_state_helpers():
    torch.manual_seed(R)  # different initial values on every rank
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01 * (R + 1))
    if R == 0:  # only the root has taken a step: the others must get Adam's state
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if R != 0:  # Horovod leaves a fresh optimizer's parameters with zero gradients
            expect_equal(p.grad, torch.zeros_like(p), f"zero grad of parameter {i}")
        # ...so that broadcasting them works (issue 13).
        hvd.broadcast_(p.grad if p.grad is not None else torch.zeros_like(p), 0,
                       name=f"grad.{i}")
        state = optimizer.state[p]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            root_value = hvd.broadcast(state[key], 0, name=f"check.{i}.{key}")
            expect_equal(state[key], root_value, f"Adam {key} of parameter {i}")
        # Where the root keeps them: the moments beside the parameter, the step on the CPU.
        assert state["exp_avg"].device == p.device and state["step"].device.type == "cpu"
    assert optimizer.param_groups[0]["lr"] == 0.01, optimizer.param_groups[0]["lr"]


class _CountingSGD(torch.optim.SGD):
    """SGD whose state also holds an int16 counter per parameter."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["count16"] = state.get("count16", torch.zeros(2, dtype=torch.int16)) + 1
        return loss


def check_int16():
    """Every torch collective on int16/uint16 against NumPy references, then the helpers and
    DistributedOptimizer with int16 state, buffers and optimizer state."""
    for dtype in INT16:
        np_dtype = np.dtype(str(dtype).replace("torch.", ""))
        seed = [41, INT16.index(dtype)]
        data = [rank_tensor(seed, q, (7, 3), dtype) for q in range(N)]
        ref = np.stack([d.numpy().astype(np.int64) for d in data])
        mine = data[R]
        what = f"{dtype} (seed {seed})"
        for op, fn in ((hvd.Sum, ref.sum(0)), (hvd.Min, ref.min(0)), (hvd.Max, ref.max(0)),
                       (hvd.Product, ref.prod(0))):
            expected = torch.from_numpy(fn.astype(np_dtype))
            expect_equal(hvd.allreduce(mine, op=op), expected, f"allreduce {op} {what}")
            inplace = mine.clone()
            hvd.allreduce_(inplace, op=op)
            expect_equal(inplace, expected, f"allreduce_ {op} {what}")
        expect_equal(hvd.allreduce(mine, op=hvd.Average),
                     torch.from_numpy(np.trunc(ref.sum(0) / N).astype(np_dtype)),
                     f"allreduce Average {what}")
        grouped = hvd.grouped_allreduce([mine, mine[:2]], op=hvd.Sum)
        expect_equal(grouped[1], torch.from_numpy(ref.sum(0)[:2].astype(np_dtype)),
                     f"grouped_allreduce {what}")
        rows = [rank_tensor(seed + [1], q, (q + 1, 2), dtype) for q in range(N)]
        expect_equal(hvd.allgather(rows[R]), torch.cat(rows), f"allgather {what}")
        expect_equal(hvd.grouped_allgather([rows[R]])[0], torch.cat(rows),
                     f"grouped_allgather {what}")
        for root in range(N):
            expect_equal(hvd.broadcast(mine, root), data[root], f"broadcast {root} {what}")
        out, received = hvd.alltoall(torch.cat([mine[:1]] * N), splits=[1] * N)
        expect_equal(out, torch.cat([d[:1] for d in data]), f"alltoall {what}")
        assert received.tolist() == [1] * N
        big = [rank_tensor(seed + [2], q, (2 * N, 3), dtype) for q in range(N)]
        total = np.stack([b.numpy().astype(np.int64) for b in big]).sum(0).astype(np_dtype)
        expect_equal(hvd.reducescatter(big[R], op=hvd.Sum),
                     torch.from_numpy(total[2 * R:2 * R + 2]), f"reducescatter {what}")
        expect_equal(hvd.grouped_reducescatter([big[R]], op=hvd.Sum)[0],
                     torch.from_numpy(total[2 * R:2 * R + 2]), f"grouped_reducescatter {what}")

    # A model with an int16 buffer, an optimizer with int16 state, DistributedOptimizer.
    torch.manual_seed(100 + R)
    model = torch.nn.Linear(3, 2)
    model.register_buffer("steps16", torch.full((4,), R + 7, dtype=torch.int16))
    optimizer = _CountingSGD(model.parameters(), lr=0.1)
    if R == 0:
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    expect_equal(model.steps16, torch.full((4,), 7, dtype=torch.int16), "int16 buffer")
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    for p in model.parameters():
        expect_equal(optimizer.state[p]["count16"], torch.ones(2, dtype=torch.int16),
                     "int16 optimizer state")
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    weight = model.weight.detach().clone()
    x = torch.full((2, 3), float(R + 1))
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
    mean_x = sum(q + 1 for q in range(N)) / N  # d(sum)/dW = batch sum of x, averaged over ranks
    expect_close(model.weight.detach(), weight - 0.1 * 2 * mean_x, "DistributedOptimizer step",
                 rtol=1e-6)
    for p in model.parameters():
        expect_equal(optimizer.state[p]["count16"], torch.full((2,), 2, dtype=torch.int16),
                     "int16 state after a distributed step")


def check_partial_distributed_optimizer():
    torch.manual_seed(7)  # the same initial model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    local = model[1]
    optimizer = hvd.PartialDistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5),
                                                named_parameters=model.named_parameters(),
                                                local_layers=local)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = []
    for q in range(N):  # what each rank's own gradient is, computed the same way everywhere
        probe = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        probe.load_state_dict(start)
        probe(torch.full((2, 3), float(q + 1))).pow(2).sum().backward()
        grads.append({k: p.grad.clone() for k, p in probe.named_parameters()})
    optimizer.zero_grad()
    model(torch.full((2, 3), float(R + 1))).pow(2).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("1."):  # local: this rank's own gradient
            expected = start[name] - 0.5 * grads[R][name]
        else:
            expected = start[name] - 0.5 * sum(g[name] for g in grads) / N
        expect_close(p.detach(), expected, f"PartialDistributedOptimizer {name}", rtol=1e-5,
                     atol=1e-6)
    expect_raises(ValueError, lambda: hvd.PartialDistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), local_layers="layer"), "local_layers")


CHECKS = [check_grouped_names_on_process_set, check_allreduce_just_before_join,
          check_join_loop_changing_rank, check_horovod_join_allreduce,
          check_mismatch_after_rank0_joined, check_horovod_gradients,
          check_optimizer_state_helpers, check_int16, check_partial_distributed_optimizer]


def main():
    """Runs the checks named on the command line (without 'check_'), or all of them."""
    global hvd, R, N
    hvd, R, N = setup()
    chosen = [c for c in CHECKS if not sys.argv[1:] or c.__name__[6:] in sys.argv[1:]]
    assert chosen, f"no check named {sys.argv[1:]}"
    start = time.monotonic()
    for check in chosen:
        check()
    hvd.barrier()
    print(f"[rank {R}] torch_compat OK on {N} ranks ({time.monotonic() - start:.1f} s)",
          flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
