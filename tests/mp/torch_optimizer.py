"""fusecomm.torch training pieces on every rank: DistributedOptimizer against one process
training on the whole batch (SGD with momentum and Adam, backward_passes_per_step 1 and 2,
groups, predivide), gradients against every rank's recomputed gradients (unused parameters,
compression, op=Sum, sparse, process sets), Horovod's usage errors, broadcast of parameters /
optimizer state / objects, SyncBatchNorm against torch.nn.BatchNorm on the whole batch, and
join() with uneven batch counts.

Run: mpirun -np N python tests/mp/torch_optimizer.py   (N = 2, 3, 4)"""
import gc
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from _util import check_bugs_visible
from torch_util import expect_close, expect_equal, expect_raises, run_main, setup

hvd, R, N = None, None, None
BATCH, STEPS = 24, 3  # the global batch divides into 1 or 2 micro-batches on 2, 3, 4 ranks


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def batch(step, rows=BATCH, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(rows, 10, generator=g).to(dtype),
            torch.randn(rows, 3, generator=g).to(dtype))


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def expect_same_on_all_ranks(tensors, what):
    """Every rank holds bit-identical tensors (compared through allgather)."""
    for i, t in enumerate(tensors):
        gathered = hvd.allgather(t.reshape(1, -1))
        for q in range(N):
            expect_equal(gathered[q], gathered[0], f"{what}: tensor {i} of rank {q} vs rank 0")


# ---- equivalence with single-process training -------------------------------------------------

def train_reference(make_opt, rows=None, loss_scale=1.0):
    """One process, no fusecomm: the whole batch (rows=None), or only these rows of it, with
    the loss (so every gradient) times loss_scale."""
    model = make_model()
    opt = make_opt(model.parameters())
    for step in range(STEPS):
        x, y = batch(step)
        if rows is not None:
            x, y = x[rows], y[rows]
        opt.zero_grad()
        (F.mse_loss(model(x), y) * loss_scale).backward()
        opt.step()
    return params_of(model)


def expect_params_match(got, expected, label, tol, wrong=()):
    """Every parameter, the last included, equals the single-process reference, and the bugs in
    `wrong` would show (_util.check_bugs_visible)."""
    assert len(got) == len(expected), f"{label}: {len(got)} parameters, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        expect_close(g, e, f"{label}: parameter {i} of {len(expected)}", rtol=tol, atol=tol)
    as_numpy = lambda params: [p.double().numpy() for p in params]  # noqa: E731
    check_bugs_visible(as_numpy(expected), [(bug, as_numpy(ps)) for bug, ps in wrong], label, tol)


def train_distributed(make_opt, passes, groups=None, **kwargs):
    """groups: None, an int, or a function of the model returning lists of its parameters."""
    model = make_model()
    opt = hvd.DistributedOptimizer(make_opt(model.parameters()),
                                   named_parameters=model.named_parameters(),
                                   backward_passes_per_step=passes,
                                   groups=groups(model) if callable(groups) else groups, **kwargs)
    shard = BATCH // N
    micro = shard // passes
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x[R * shard:(R + 1) * shard], y[R * shard:(R + 1) * shard]
        opt.zero_grad()
        for m in range(passes):
            part = slice(m * micro, (m + 1) * micro)
            (F.mse_loss(model(x[part]), y[part]) / passes).backward()
            submitted = [h for h, _ in opt._handles.values() if h is not None]
            if m < passes - 1:
                assert not submitted, "allreduce submitted before the last accumulation pass"
            elif groups is None:
                # Overlap: every gradient's allreduce is in flight as soon as backward returns,
                # before step() is called.
                assert len(submitted) == 4, f"{len(submitted)} of 4 allreduces submitted"
            elif callable(groups):
                assert (model[0].weight, model[0].bias) in opt._handles, \
                    "the first layer was not allreduced as one group"
        opt.step()
    return params_of(model)


def check_equivalence():
    sgd = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)  # noqa: E731
    adam = lambda params: torch.optim.Adam(params, lr=0.01)  # noqa: E731
    first_layer = lambda model: [[model[0].weight, model[0].bias]]  # noqa: E731
    cases = [("SGD momentum", sgd, 1, {}), ("SGD momentum", sgd, 2, {}),
             ("Adam", adam, 1, {}), ("Adam", adam, 2, {}),
             ("SGD groups=2 predivide", sgd, 1, dict(groups=2, gradient_predivide_factor=2.0)),
             ("Adam groups list", adam, 2, dict(groups=first_layer))]
    shard = slice(R * (BATCH // N), (R + 1) * (BATCH // N))
    for label, make_opt, passes, kwargs in cases:
        expected = train_reference(make_opt)
        # Adam is invariant to a gradient's scale, so a Sum there trains (almost) the same.
        wrong = [("no reduction (this rank's shard alone)", train_reference(make_opt, shard))]
        if make_opt is sgd:
            wrong.append(("Sum instead of Average", train_reference(make_opt, loss_scale=N)))
        got = train_distributed(make_opt, passes, **kwargs)
        expect_params_match(got, expected, f"{label} passes={passes}", 1e-5, wrong)
        expect_same_on_all_ranks(got, f"{label} passes={passes}")


# ---- gradients against every rank's own gradients ---------------------------------------------

class TwoHeads(nn.Module):
    """The second head is used only on even ranks: its gradient is missing on odd ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Linear(4, 6).double()
        self.head_a = nn.Linear(6, 2).double()
        self.head_b = nn.Linear(6, 2).double()

    def forward(self, x, rank):
        h = torch.tanh(self.body(x))
        out = self.head_a(h).sum()
        if rank % 2 == 0:
            out = out + self.head_b(h).pow(2).sum()
        return out


def two_heads_data(rank):
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(50 + rank)).double()


def local_grads(rank):
    """The gradients rank `rank` computes on its own data (zero where it has none)."""
    model = TwoHeads()
    model(two_heads_data(rank), rank).backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]


def synchronized_grads(**kwargs):
    model = TwoHeads()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                   named_parameters=model.named_parameters(), **kwargs)
    model(two_heads_data(R), R).backward()
    opt.synchronize()
    # A process set of one rank leaves gradients alone, unused ones at None.
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
             for p in model.parameters()]
    with opt.skip_synchronize():
        opt.step()
    return grads


def check_gradients():
    per_rank = [local_grads(q) for q in range(N)]
    mean = [sum(g[i] for g in per_rank) / N for i in range(len(per_rank[0]))]
    for i, (got, exp) in enumerate(zip(synchronized_grads(), mean)):
        expect_close(got, exp, f"averaged grad {i} (head_b unused on odd ranks)", rtol=1e-12)
    total = [m * N for m in mean]
    for i, (got, exp) in enumerate(zip(synchronized_grads(op=hvd.Sum), total)):
        expect_close(got, exp, f"summed grad {i}", rtol=1e-12)
    for compression, rtol in [(hvd.Compression.fp16, 2e-3), (hvd.Compression.bf16, 1.6e-2)]:
        wire = torch.float16 if compression is hvd.Compression.fp16 else torch.bfloat16
        got = synchronized_grads(compression=compression)
        for i, (g, e) in enumerate(zip(got, mean)):
            assert g.dtype == torch.float64
            # Each rank's gradient is rounded to the wire type, summed and scaled there.
            ref = sum(pr[i].to(wire).double() for pr in per_rank) / N
            expect_close(g, ref, f"{wire} compressed grad {i}", rtol=rtol, atol=1e-3)

    # Within a process set, gradients average over its members only.
    even = hvd.add_process_set(list(range(0, N, 2)))
    odd = hvd.add_process_set(list(range(1, N, 2)))
    mine = even if R % 2 == 0 else odd
    members = mine.ranks
    got = synchronized_grads(process_set=mine)
    for i, g in enumerate(got):
        ref = sum(per_rank[q][i] for q in members) / len(members)
        expect_close(g, ref, f"process set grad {i}", rtol=1e-12)
    hvd.remove_process_set(even)
    hvd.remove_process_set(odd)


def check_sparse():
    for sparse_as_dense in (False, True):
        torch.manual_seed(7)
        emb = nn.Embedding(10, 4, sparse=True).double()
        start = emb.weight.detach().clone()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=1.0),
                                       named_parameters=emb.named_parameters(),
                                       sparse_as_dense=sparse_as_dense)

        def rows(q):
            return torch.tensor([(q + 3 * k) % 10 for k in range(3)])

        def upstream(q):
            return torch.randn(3, 4, generator=torch.Generator().manual_seed(70 + q)).double()

        (emb(rows(R)) * upstream(R)).sum().backward()
        opt.step()
        dense = torch.zeros(10, 4, dtype=torch.float64)
        for q in range(N):
            dense.index_add_(0, rows(q), upstream(q))
        expect_close(emb.weight.detach(), start - dense / N,
                     f"sparse embedding update (sparse_as_dense={sparse_as_dense})", rtol=1e-12,
                     atol=1e-12)


# ---- Horovod's usage rules ---------------------------------------------------------------------

def check_usage_errors():
    model = make_model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SGD"
    x, y = batch(0, rows=4)
    F.mse_loss(model(x), y).backward()
    # zero_grad between backward and step would race with the in-flight allreduces.
    expect_raises(AssertionError, opt.zero_grad, "before optimizer.step()")
    opt.step()
    opt.zero_grad()
    # A second backward before step() with backward_passes_per_step=1.
    F.mse_loss(model(x), y).backward()
    expect_raises(AssertionError, lambda: F.mse_loss(model(x), y).backward(),
                  "backward_passes_per_step")
    opt.step()
    opt.zero_grad()
    # step() after synchronize() without skip_synchronize() warns; with it, it does not.
    F.mse_loss(model(x), y).backward()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opt.skip_synchronize():
            opt.step()
    assert not caught, [str(w.message) for w in caught]
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any("skip_synchronize" in str(w.message) for w in caught)
    expect_same_on_all_ranks(params_of(model), "after usage checks")

    # Grouped parameters count their backward passes too.
    model = make_model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), groups=1)
    F.mse_loss(model(x), y).backward()
    expect_raises(AssertionError, lambda: F.mse_loss(model(x), y).backward(),
                  "backward_passes_per_step")
    opt.step()

    # Wrapping a model's optimizer again: the dropped wrapper's hooks must not submit anything
    # (the same names would be in flight twice).
    model = make_model()
    first = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                     named_parameters=model.named_parameters())
    del first
    gc.collect()
    second = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                      named_parameters=model.named_parameters())
    F.mse_loss(model(x), y).backward()
    second.step()
    expect_same_on_all_ranks(params_of(model), "after re-wrapping")


# ---- broadcasts -------------------------------------------------------------------------------

def check_broadcasts():
    root = N - 1
    reference = make_model(seed=root)
    for form in ("state_dict", "named_parameters", "parameters"):
        model = make_model(seed=R)
        params = {"state_dict": lambda: model.state_dict(),
                  "named_parameters": lambda: model.named_parameters(),  # a generator
                  "parameters": lambda: list(model.parameters())}[form]()
        hvd.broadcast_parameters(params, root_rank=root)
        for i, (got, exp) in enumerate(zip(model.parameters(), reference.parameters())):
            expect_equal(got.detach(), exp.detach(), f"broadcast_parameters({form}) param {i}")
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(R)
    bn.num_batches_tracked.fill_(R + 5)
    hvd.broadcast_parameters(bn.state_dict(), root_rank=0)
    expect_equal(bn.running_mean, torch.zeros(3), "broadcast of buffers")
    expect_equal(bn.num_batches_tracked, torch.tensor(5), "broadcast of an int64 buffer")

    for make_opt in (lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9)),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)):
        model = make_model()
        opt = make_opt(model.parameters())
        if R == 0:  # only the root has trained: it has state, the others have none
            for step in range(2):
                x, y = batch(step, rows=6)
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
            opt.param_groups[0]["lr"] = 0.005
            opt.state[model[0].weight]["custom_scalar"] = 7
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        root_state = hvd.broadcast_object(opt.state_dict() if R == 0 else None, root_rank=0)
        mine = opt.state_dict()
        assert mine["param_groups"] == root_state["param_groups"], mine["param_groups"]
        assert mine["param_groups"][0]["lr"] == 0.005
        assert mine["state"].keys() == root_state["state"].keys()
        for pid, entries in root_state["state"].items():
            assert mine["state"][pid].keys() == entries.keys()
            for key, value in entries.items():
                if torch.is_tensor(value):
                    expect_equal(mine["state"][pid][key], value, f"optimizer state {pid}.{key}")
                else:
                    assert mine["state"][pid][key] == value, (pid, key)
        assert opt.state[model[0].weight]["custom_scalar"] == 7
        x, y = batch(3, rows=6)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        expect_same_on_all_ranks(params_of(model), "a step after broadcast_optimizer_state")
    # A root without state empties the others'.
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if R != N - 1:
        F.mse_loss(model(batch(0, rows=4)[0]), batch(0, rows=4)[1]).backward()
        opt.step()
    hvd.broadcast_optimizer_state(opt, root_rank=N - 1)
    assert not opt.state_dict()["state"]

    obj = {"rank": R, "tensor": torch.arange(3) * R} if R == root else None
    got = hvd.broadcast_object(obj, root_rank=root)
    assert got["rank"] == root and torch.equal(got["tensor"], torch.arange(3) * root)
    objects = hvd.allgather_object(R if R % 2 else str(R) * (R + 1))
    assert objects == [q if q % 2 else str(q) * (q + 1) for q in range(N)], objects

    # Within process sets root_rank stays a global rank (Horovod's convention).
    even = hvd.add_process_set(list(range(0, N, 2)))
    odd = hvd.add_process_set(list(range(1, N, 2)))
    mine = even if R % 2 == 0 else odd
    root = mine.ranks[-1]
    got = hvd.broadcast_object({"from": R} if R == root else None, root_rank=root,
                               process_set=mine)
    assert got == {"from": root}, got
    model = make_model(seed=R)
    hvd.broadcast_parameters(model.state_dict(), root_rank=root, process_set=mine)
    for i, (p, q) in enumerate(zip(model.parameters(), make_model(seed=root).parameters())):
        expect_equal(p.detach(), q.detach(), f"broadcast_parameters in a process set, param {i}")
    assert hvd.allgather_object(R, process_set=mine) == mine.ranks
    hvd.remove_process_set(even)
    hvd.remove_process_set(odd)


# ---- join ------------------------------------------------------------------------------------

def check_join():
    """Rank q has q + 1 batches and then joins; while it waits, the others' averaged gradients
    count it as zero (divided by the full size, as in Horovod). Every rank's weights are
    checked against a replay of the whole run computed locally."""
    lr, steps = 0.5, [q + 1 for q in range(N)]

    def make():
        torch.manual_seed(11)
        return nn.Linear(3, 1).double()

    def data(q, step):
        g = torch.Generator().manual_seed(300 + 10 * q + step)
        return torch.randn(4, 3, generator=g).double(), torch.randn(4, 1, generator=g).double()

    model = make()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr),
                                   named_parameters=model.named_parameters())
    for step in range(steps[R]):
        opt.zero_grad()
        x, y = data(R, step)
        F.mse_loss(model(x), y).backward()
        opt.step()
    assert hvd.join() == N - 1

    replay = make()
    for step in range(steps[R]):
        total = [torch.zeros_like(p) for p in replay.parameters()]
        for q in range(N):
            if steps[q] > step:  # ranks still training at this step
                replay.zero_grad()
                x, y = data(q, step)
                F.mse_loss(replay(x), y).backward()
                total = [t + p.grad for t, p in zip(total, replay.parameters())]
        with torch.no_grad():
            for t, p in zip(total, replay.parameters()):
                p -= lr * t / N
    for i, (got, exp) in enumerate(zip(model.parameters(), replay.parameters())):
        expect_close(got.detach(), exp.detach(), f"join: param {i} after {steps[R]} steps",
                     rtol=1e-12, atol=1e-14)


# ---- SyncBatchNorm ---------------------------------------------------------------------------

def check_sync_batch_norm():
    sizes = [2 + q for q in range(N)]
    if N >= 3:
        sizes[1] = 0  # a rank without samples
    lo, hi = sum(sizes[:R]), sum(sizes[:R + 1])
    channels = 3
    g = torch.Generator().manual_seed(90)
    for shape_tail, ref_cls in [((5,), nn.BatchNorm1d), ((3, 2), nn.BatchNorm2d),
                                ((), nn.BatchNorm1d)]:
        for momentum in (0.1, None):
            x = torch.randn(sum(sizes), channels, *shape_tail, generator=g) * 3 + 1
            upstream = torch.randn(x.shape, generator=g)
            ref = ref_cls(channels, momentum=momentum)
            sync = hvd.SyncBatchNorm(channels, momentum=momentum)
            with torch.no_grad():
                ref.weight.copy_(torch.randn(channels, generator=g))
                ref.bias.copy_(torch.randn(channels, generator=g))
                sync.weight.copy_(ref.weight)
                sync.bias.copy_(ref.bias)
            what = f"SyncBatchNorm {tuple(x.shape)} momentum={momentum}"
            for step in range(2):  # two steps: running statistics accumulate
                x_all = (x + step).requires_grad_()
                y_all = ref(x_all)
                (y_all * upstream).sum().backward()
                x_mine = (x + step)[lo:hi].clone().requires_grad_()
                y_mine = sync(x_mine)
                (y_mine * upstream[lo:hi]).sum().backward()
                expect_close(y_mine.detach(), y_all.detach()[lo:hi], f"{what} output",
                             rtol=1e-5, atol=1e-5)
                expect_close(x_mine.grad, x_all.grad[lo:hi], f"{what} input grad",
                             rtol=1e-4, atol=1e-5)
            # Parameter gradients are local: their sum over ranks is the whole batch's.
            expect_close(hvd.allreduce(sync.weight.grad, op=hvd.Sum), ref.weight.grad,
                         f"{what} weight grad", rtol=1e-4, atol=1e-5)
            expect_close(hvd.allreduce(sync.bias.grad, op=hvd.Sum), ref.bias.grad,
                         f"{what} bias grad", rtol=1e-4, atol=1e-5)
            expect_close(sync.running_mean, ref.running_mean, f"{what} running mean",
                         rtol=1e-5, atol=1e-6)
            expect_close(sync.running_var, ref.running_var, f"{what} running var",
                         rtol=1e-5, atol=1e-6)
            expect_equal(sync.num_batches_tracked, ref.num_batches_tracked, f"{what} count")
            sync.eval()
            ref.eval()
            expect_close(sync(x[lo:hi]).detach(), ref(x).detach()[lo:hi], f"{what} eval",
                         rtol=1e-5, atol=1e-5)


def main():
    global hvd, R, N
    hvd, R, N = setup()
    check_equivalence()
    check_gradients()
    check_sparse()
    check_usage_errors()
    check_broadcasts()
    check_sync_batch_norm()
    check_join()
    hvd.barrier()
    print(f"[rank {R}] torch_optimizer OK on {N} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
