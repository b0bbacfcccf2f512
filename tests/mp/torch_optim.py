"""fusecomm.torch.optim on several ranks: LARS, LAMB and RMSpropWarmup under
DistributedOptimizer against one process training them on the whole batch (itself checked
against the papers' formulas in tests/test_optim.py), and batch-size control: at every step of
every rank the global batch (samples summed over ranks) and the rate are the plan's, gradient
accumulation included, and the weights match one process training on the same global batches;
DistributedOptimizer(op=Adasum) against Horovod's delta scheme with a NumPy-style Adasum tree.

Run: mpirun -np N python tests/mp/torch_optim.py   (N = 2, 3)"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from adasum_reference import adasum_tree
from torch_util import expect_close, run_main, setup

hvd, R, N = None, None, None
DATA = 144  # samples; every stage's global batch below divides it on 2 and 3 ranks


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16, affine=True,
                                                           track_running_stats=False),
                         nn.Tanh(), nn.Linear(16, 3)).double()


def dataset():
    g = torch.Generator().manual_seed(7)
    return torch.randn(DATA, 10, generator=g).double(), torch.randn(DATA, 3, generator=g).double()


def loss_of(model, x, y):
    return F.mse_loss(model(x), y)


def check_optimizers_under_distributed_optimizer():
    from fusecomm.torch import optim as topt

    x, y = dataset()
    cases = {"LARS": lambda ps: topt.LARS(ps, lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.01),
             "LAMB": lambda ps: topt.LAMB(ps, lr=0.02, weight_decay=0.01),
             "RMSpropWarmup": lambda ps: topt.RMSpropWarmup(ps, lr=0.01, steps_per_epoch=2,
                                                            center=1.0, period=2.0)}
    batch, shard = 12 * N, 12
    for label, make_opt in cases.items():
        ref = make_model()
        ref_opt = make_opt(ref.parameters())
        model = make_model()
        opt = hvd.DistributedOptimizer(make_opt(model.parameters()),
                                       named_parameters=model.named_parameters())
        # BatchNorm here normalizes each rank's shard, so the reference sums the shards' losses.
        for step in range(5):
            xs, ys = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
            ref_opt.zero_grad()
            sum(loss_of(ref, xs[q * shard:(q + 1) * shard], ys[q * shard:(q + 1) * shard])
                for q in range(N)).div(N).backward()
            ref_opt.step()
            opt.zero_grad()
            loss_of(model, xs[R * shard:(R + 1) * shard], ys[R * shard:(R + 1) * shard]).backward()
            opt.step()
            for i, (p, q) in enumerate(zip(model.parameters(), ref.parameters())):
                # RMSprop divides by sqrt(m): gradients near zero amplify the all-reduce's
                # different summation order, hence the looser bound.
                expect_close(p.detach(), q.detach(), f"{label} step {step} param {i}",
                             rtol=1e-9 if label != "RMSpropWarmup" else 1e-6, atol=1e-12)


# Stages: (start epoch, global batch). max_rank_batch 8, so larger shares accumulate: on 2 ranks
# 12 per rank = 2 passes of 6 and 36 = 6 passes of 6 (5 do not divide 36); on 3 ranks 24 = 3 of 8.
STAGES = [(0, 12), (2, 24), (3, 72)]
EPOCHS = 5
BASE_LR, BASE_BATCH = 0.05, 12


def expected_schedule():
    """(global batch, lr, passes) of every optimizer step, written out from the stages by hand
    arithmetic rather than through BatchSizePlan."""
    out = []
    for epoch in range(EPOCHS):
        g = 12 if epoch < 2 else 24 if epoch < 3 else 72
        per_rank = g // N
        passes = 1 if per_rank <= 8 else {12: 2, 24: 3, 36: 6}[per_rank]
        out += [(g, BASE_LR * g / BASE_BATCH, passes)] * (DATA // g)
    return out


def check_batch_size_control():
    from fusecomm.optim import BatchSizePlan
    from fusecomm.torch.optim import BatchSizeController

    x, y = dataset()
    plan = BatchSizePlan(STAGES, ranks=N, base_lr=BASE_LR, base_batch=BASE_BATCH,
                         max_rank_batch=8)
    model = make_model()[0:1]  # Linear only: the loss is a mean over the global batch
    ref = make_model()[0:1]
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.0, momentum=0.9)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9),
                                   named_parameters=model.named_parameters())
    control = BatchSizeController(plan, opt)
    head = torch.ones(16, 3, dtype=torch.float64) / 16
    seen = []
    for epoch in range(EPOCHS):
        stage = control.start_epoch(epoch)
        order = torch.randperm(DATA, generator=torch.Generator().manual_seed(100 + epoch))
        for step in range(plan.steps_in_epoch(epoch, DATA)):
            batch = order[step * stage.global_batch:(step + 1) * stage.global_batch]
            mine = batch[R * stage.rank_batch:(R + 1) * stage.rank_batch]
            opt.zero_grad()
            for m in range(stage.backward_passes):
                part = mine[m * stage.micro_batch:(m + 1) * stage.micro_batch]
                (F.mse_loss(model(x[part]) @ head, y[part]) / stage.backward_passes).backward()
            samples = hvd.allreduce(torch.tensor(len(mine)), op=hvd.Sum, name="samples")
            seen.append((samples.item(), opt.param_groups[0]["lr"], opt.backward_passes_per_step))
            opt.step()
            ref_opt.zero_grad()
            for group in ref_opt.param_groups:
                group["lr"] = BASE_LR * len(batch) / BASE_BATCH
            F.mse_loss(ref(x[batch]) @ head, y[batch]).backward()
            ref_opt.step()
            for i, (p, q) in enumerate(zip(model.parameters(), ref.parameters())):
                expect_close(p.detach(), q.detach(), f"epoch {epoch} step {step} param {i}",
                             rtol=1e-9, atol=1e-12)
    expected = expected_schedule()
    assert len(seen) == len(expected), f"{len(seen)} steps, expected {len(expected)}"
    for k, (got, want) in enumerate(zip(seen, expected)):
        assert got[0] == want[0] and got[2] == want[2] and abs(got[1] - want[1]) < 1e-12, \
            f"step {k}: (global batch, lr, passes) {got}, expected {want}"


def check_adasum_optimizer():
    """Horovod's delta scheme: each rank steps its own optimizer (own momentum) on its shard;
    the parameters become start + adasum(every rank's delta). Reference: one process keeping
    N optimizers, one per rank."""
    x, y = dataset()
    shard = 12
    model = make_model()[0:1]
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=model.named_parameters(), op=hvd.Adasum)
    copies = [make_model()[0:1] for _ in range(N)]
    copy_opts = [torch.optim.SGD(c.parameters(), lr=0.1, momentum=0.9) for c in copies]
    shared = [p.detach().clone() for p in copies[0].parameters()]
    for step in range(4):
        base = step * shard * N
        rows = lambda q: slice(base + q * shard, base + (q + 1) * shard)  # noqa: E731
        opt.zero_grad()
        F.mse_loss(model(x[rows(R)]), y[rows(R)][:, :1].expand(-1, 16)).backward()
        opt.step()
        deltas = []
        for q, (c, o) in enumerate(zip(copies, copy_opts)):
            with torch.no_grad():
                for p, s in zip(c.parameters(), shared):
                    p.copy_(s)
            o.zero_grad()
            F.mse_loss(c(x[rows(q)]), y[rows(q)][:, :1].expand(-1, 16)).backward()
            o.step()
            deltas.append([p.detach() - s for p, s in zip(c.parameters(), shared)])
        shared = [s + torch.from_numpy(adasum_tree(
                      [d[i].reshape(-1).numpy() for d in deltas])).reshape(s.shape)
                  for i, s in enumerate(shared)]
        for i, (p, want) in enumerate(zip(model.parameters(), shared)):
            expect_close(p.detach(), want, f"Adasum optimizer step {step} param {i}",
                         rtol=1e-9, atol=1e-12)


def main():
    global hvd, R, N
    hvd, R, N = setup()
    check_optimizers_under_distributed_optimizer()
    check_batch_size_control()
    check_adasum_optimizer()
    hvd.barrier()
    print(f"[rank {R}] torch_optim OK on {N} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
