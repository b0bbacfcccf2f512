"""fusecomm.torch.DistributedOptimizer on CUDA parameters: N ranks each training on their slice
of the global batch end up with the parameters of one process training on the whole batch
(SGD with momentum; fused gradient all-reduces on the GPU), on every rank.

Run: mpirun -np N python tests/gpu/mp/device_optimizer.py"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "mp"))
from torch_util import expect_close, run_main, setup  # noqa: E402

BATCH, STEPS = 24, 4


def make_model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).to(device)


def batch(step, device):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 10, generator=g).to(device), torch.randn(BATCH, 3, generator=g).to(device)


def main():
    hvd, rank, size = setup()
    torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device())

    reference = make_model(device)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = batch(step, device)
        ref_opt.zero_grad()
        F.mse_loss(reference(x), y).backward()
        ref_opt.step()

    model = make_model(device)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    rows = BATCH // size
    for step in range(STEPS):
        x, y = batch(step, device)
        mine = slice(rank * rows, (rank + 1) * rows)
        opt.zero_grad()
        F.mse_loss(model(x[mine]), y[mine]).backward()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.device == device, f"{name} left the GPU"
        expect_close(p.detach().cpu(), q.detach().cpu(), f"parameter {name}", rtol=1e-5, atol=1e-6)
    hvd.shutdown()
    print(f"rank {rank}: DistributedOptimizer on CUDA matches single-process training")


if __name__ == "__main__":
    run_main(main)
