"""fusecomm.torch.SyncBatchNorm(moving_averages=False) (Akiba et al.'s batch normalization
without moving averages) on several ranks with uneven batches (rank r holds 2 + 3r samples;
rank 1 none at 3+ ranks), in a model converted by convert_sync_batchnorm and trained by
DistributedOptimizer: after every training step the stored statistics are NumPy's mean and
biased variance of that step's global batch (inputs to the layer recomputed from every rank's
data), evaluation normalizes with them, and evaluating the last batch reproduces its training
output.

Run: mpirun -np N python tests/mp/torch_batch_norm_stats.py   (N = 2, 3)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch_util import run_main, setup  # noqa: E402

SEED = 1130
CHANNELS = 3


def rows_of(q, n):
    return 0 if (q == 1 and n >= 3) else 2 + 3 * q


def close(got, want, what, rtol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.abs(got - want).max()) if want.size else 0.0
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    assert got.shape == want.shape and err <= rtol * scale, \
        f"{what} (seed {SEED}): max error {err:g}\n{got}\n{want}"


def main():
    hvd, r, n = setup()
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv1d(2, CHANNELS, 1), nn.BatchNorm1d(CHANNELS, momentum=0.3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(CHANNELS * 4, 1))
    model = hvd.SyncBatchNorm.convert_sync_batchnorm(model, moving_averages=False)
    bn = model[1]
    assert isinstance(bn, hvd.SyncBatchNorm) and not bn.moving_averages, repr(bn)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    sizes = [rows_of(q, n) for q in range(n)]
    lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
    rng = np.random.default_rng([SEED, n])
    for step in range(3):
        x_all = torch.from_numpy(rng.standard_normal((sum(sizes), 2, 4)).astype(np.float32) * 2
                                 + step)
        y_all = torch.from_numpy(rng.standard_normal((sum(sizes), 1)).astype(np.float32))
        # The layer's input for the whole global batch, from the weights before this step.
        with torch.no_grad():
            z_all = model[0](x_all).double().numpy()
        model.train()
        opt.zero_grad()
        out = model[:2](x_all[lo:hi])
        loss = ((model[2:](out) - y_all[lo:hi]) ** 2).sum()
        loss.backward()
        opt.step()
        mean = z_all.mean(axis=(0, 2))
        var = z_all.var(axis=(0, 2))
        what = f"step {step} on {n} ranks"
        close(bn.running_mean.numpy(), mean, f"{what}: stored mean")
        close(bn.running_var.numpy(), var, f"{what}: stored (biased) variance")
        assert int(bn.num_batches_tracked) == step + 1
    # Evaluation with the last batch's statistics: the weights moved since, so feed the stored
    # input (z) of the last batch straight to the layer.
    model.eval()
    z_mine = torch.from_numpy(z_all[lo:hi].astype(np.float32))
    w = bn.weight.detach().double().numpy()[None, :, None]
    b = bn.bias.detach().double().numpy()[None, :, None]
    want = (z_all[lo:hi] - mean[None, :, None]) / np.sqrt(var[None, :, None] + bn.eps) * w + b
    with torch.no_grad():
        got_eval = bn(z_mine)
    close(got_eval.numpy(), want, "evaluation with the last batch's statistics")
    # Training mode on the same batch gives the same output (the statistics it stores).
    bn.train()
    with torch.no_grad():
        close(bn(z_mine).numpy(), got_eval.numpy(), "training output equals evaluation output")
    hvd.barrier()
    print(f"[rank {r}] torch_batch_norm_stats OK on {n} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
