"""Data-parallel training of a small MLP on scikit-learn's bundled digits (8x8 images, no
download), written as a Horovod script with only the import changed.

    mpirun -np 4 python examples/pytorch_train.py

Each rank trains on its shard of the training set; DistributedOptimizer averages gradients
while backward runs; rank 0 prints the per-epoch loss (averaged over ranks) and the final test
accuracy (counted over every rank's shard of the test set)."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fusecomm.torch as hvd


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.01, help="per rank; scaled by size()")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def main():
    args = parse_args()
    hvd.init()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # ranks share the machine's cores

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2,
                                                        random_state=args.seed, stratify=y)
    # Each rank takes every size()-th sample.
    shard = slice(hvd.rank(), None, hvd.size())
    x_train, y_train = x_train[shard], y_train[shard]
    x_test, y_test = x_test[shard], y_test[shard]

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    # Linear learning-rate scaling: the global batch is size() times the per-rank batch.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    # Every rank runs the same number of steps (shards differ by at most one sample).
    steps = hvd.allreduce(torch.tensor(len(x_train)), op=hvd.Min, name="steps").item() \
        // args.batch_size
    generator = torch.Generator().manual_seed(args.seed + hvd.rank())
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = torch.zeros(())
        for step in range(steps):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.detach()
        epoch_loss = hvd.allreduce(total / steps, name="epoch_loss")  # averaged over ranks
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1:2d}  loss {epoch_loss.item():.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        correct = (model(x_test).argmax(dim=1) == y_test).sum()
    counts = hvd.allreduce(torch.stack([correct, torch.tensor(len(y_test))]), op=hvd.Sum,
                           name="test_counts")
    if hvd.rank() == 0:
        print(f"test accuracy {counts[0].item() / counts[1].item():.4f} "
              f"({counts[0].item()}/{counts[1].item()}) on {hvd.size()} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    main()
