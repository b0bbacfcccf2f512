"""Large-batch training on scikit-learn's bundled digits (no download): docs/large_batch.md's
experiment, on every rank of `fusecomm run -np 4`.

    fusecomm run -np 4 -- python examples/large_batch.py --config recipe --seeds 0
    fusecomm run -np 4 -- python examples/large_batch.py --config all --seeds 0,1,2 --json out.jsonl

Configurations (B = --small-batch, the large batch is --scale times B; batches are global):
  small     momentum SGD at B, rate --lr
  sgd       momentum SGD at the large batch, rate scaled linearly (lr * scale), no warm-up
  recipe    LARS at the large batch + gradual warm-up then polynomial decay + label smoothing
            0.1 + no weight decay or trust ratio on bias and normalization parameters
  lamb      the same recipe with LAMB instead of LARS
  control   batch-size control: the batch grows from B through 4B to the large batch (at 1/4
            and 1/2 of the epochs), the rate scaled with it, accumulation past 32 per rank
  adasum    the large batch with DistributedOptimizer(op=Adasum): each rank steps SGD on its
            shard at the rate of its own share of the batch, Adasum combines the steps

Every configuration trains the same model for the same number of epochs (so the large batch
takes `scale` times fewer steps). Rank 0 prints one JSON object per epoch (test accuracy on the
held-out 20%) and, with --json, appends each run's summary to that file. Several configurations
and seeds run one after the other in the same job."""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fusecomm.torch as hvd
from fusecomm.optim import BatchSizePlan, warmup_then_decay
from fusecomm.torch import optim as fopt

CONFIGS = ("small", "sgd", "recipe", "lamb", "control", "adasum")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS + ("all",), required=True,
                        help="one configuration, or all of them in turn")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, run in turn")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--small-batch", type=int, default=8, help="B, global")
    parser.add_argument("--scale", type=int, default=32, help="large batch = scale * B")
    parser.add_argument("--lr", type=float, default=0.01, help="momentum SGD's rate at B")
    parser.add_argument("--warmup-epochs", type=int, default=4)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--json", help="append the run's summary to this file (rank 0)")
    args = parser.parse_args()
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error(f"--warmup-epochs ({args.warmup_epochs}) must be below --epochs "
                     f"({args.epochs})")
    return args


def make_model():
    # LayerNorm, not BatchNorm: at B = 8 on 4 ranks each rank normalizes 2 samples.
    return nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(),
                         nn.Linear(128, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 10))


def load_data(seed):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build(args, model):  # noqa: C901 - one branch per configuration
    """(optimizer, global batch of each epoch, rate of each step, loss function, plan)."""
    n = hvd.size()
    large = args.small_batch * args.scale
    named = dict(named_parameters=model.named_parameters())
    ce = nn.CrossEntropyLoss()
    if args.config == "small":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=args.weight_decay)
        return hvd.DistributedOptimizer(opt, **named), args.small_batch, None, ce, None
    if args.config == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr * args.scale, momentum=0.9,
                              weight_decay=args.weight_decay)
        return hvd.DistributedOptimizer(opt, **named), large, None, ce, None
    if args.config in ("recipe", "lamb"):
        groups = fopt.param_groups_no_decay(model, args.weight_decay)
        if args.config == "recipe":
            # LARS' rate is the global one times eta * ||w|| / ||g||: 1.0 with eta 0.02 keeps
            # each layer's step at about 2% of its weights at the peak.
            opt, peak = fopt.LARS(groups, lr=1.0, momentum=0.9, eta=0.02), 1.0
        else:
            opt, peak = fopt.LAMB(groups, lr=0.02), 0.02
        return (hvd.DistributedOptimizer(opt, **named), large, peak,
                fopt.label_smoothing_loss(), None)
    if args.config == "control":
        stages = [(0, args.small_batch), (args.epochs // 4, 4 * args.small_batch),
                  (args.epochs // 2, large)]
        plan = BatchSizePlan(stages, ranks=n, base_lr=args.lr, base_batch=args.small_batch,
                             max_rank_batch=32)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=args.weight_decay)
        return hvd.DistributedOptimizer(opt, **named), None, None, ce, plan
    # adasum: each rank's SGD works on large / n samples, so its rate is scaled to that share.
    opt = torch.optim.SGD(model.parameters(), lr=args.lr * args.scale / n, momentum=0.9,
                          weight_decay=args.weight_decay)
    return hvd.DistributedOptimizer(opt, op=hvd.Adasum, **named), large, None, ce, None


def train(args):
    """One run of args.config with args.seed; returns its summary (rank 0 prints the epochs)."""
    torch.manual_seed(args.seed)
    r, n = hvd.rank(), hvd.size()
    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = make_model()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt, fixed_batch, peak, loss_fn, plan = build(args, model)
    control = fopt.BatchSizeController(plan, opt) if plan else None
    total_steps = args.epochs * (len(x_train) // (fixed_batch or args.small_batch))
    history, step, started = [], 0, time.time()
    for epoch in range(args.epochs):
        if control:
            stage = control.start_epoch(epoch)
            batch, micro, passes = stage.global_batch, stage.micro_batch, stage.backward_passes
        else:
            batch, passes = fixed_batch, 1
            micro = batch // n
        steps = len(x_train) // batch
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(
            args.seed * 1000 + epoch))
        model.train()
        for s in range(steps):
            if peak is not None:  # warm-up then polynomial decay, per step
                lr = warmup_then_decay(step, args.warmup_epochs * steps, total_steps, peak,
                                       start_lr=peak / args.scale, decay="polynomial")
                for group in opt.param_groups:
                    group["lr"] = lr
            rows = order[s * batch:(s + 1) * batch][r * (batch // n):(r + 1) * (batch // n)]
            opt.zero_grad()
            for m in range(passes):
                part = rows[m * micro:(m + 1) * micro]
                (loss_fn(model(x_train[part]), y_train[part]) / passes).backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            train_loss = F.cross_entropy(model(x_train), y_train).item()
        history.append({"epoch": epoch + 1, "test_accuracy": accuracy, "train_loss": train_loss,
                        "batch": batch, "lr": opt.param_groups[0]["lr"], "steps": step})
        if r == 0:
            print(json.dumps(history[-1]), flush=True)
    summary = {"config": args.config, "seed": args.seed, "ranks": n,
               "small_batch": args.small_batch, "scale": args.scale, "epochs": args.epochs,
               "final_test_accuracy": history[-1]["test_accuracy"],
               "best_test_accuracy": max(h["test_accuracy"] for h in history),
               "steps": step, "seconds": round(time.time() - started, 1), "history": history}
    # Every rank holds the same model: a check that costs one allgather.
    digest = torch.tensor([sum(p.double().sum().item() for p in model.parameters())])
    assert np.allclose(hvd.allgather(digest).numpy(), digest.item(), rtol=0, atol=0), \
        "ranks ended with different models"
    if r == 0:
        print(f"final test accuracy {summary['final_test_accuracy']:.4f} "
              f"({args.config}, seed {args.seed}, {step} steps, {summary['seconds']} s)",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(summary) + "\n")
    return summary


def main():
    args = parse_args()
    hvd.init()
    torch.set_num_threads(1)  # ranks share the machine's cores
    configs = CONFIGS if args.config == "all" else (args.config,)
    for config in configs:
        for seed in [int(s) for s in args.seeds.split(",")]:
            train(argparse.Namespace(**{**vars(args), "config": config, "seed": seed}))
    hvd.shutdown()


if __name__ == "__main__":
    main()
