"""What fusecomm.torch.DistributedOptimizer adds to a training step: the same MLP step with the
bare optimizer and with the wrapped one, interleaved step by step in one process (so a burst of
load on a shared machine lands on both alike), at several rank counts.

    python benchmarks/step_overhead.py [--ranks 1 2] [--steps 300] [--json out.jsonl]

Printed per rank count: the bare and the wrapped step's median and 10th percentile (the slowest
rank's), and their ratios. At 1 rank nothing is communicated, so the ratio is the wrapper's own
cost (hooks, submissions, handle waits, engine threads); at more ranks it includes the
all-reduce of the gradients."""
import argparse
import json
import os
import subprocess
import sys
import time

RESULT_TAG = "RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=300, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--json", help="append one JSON line per rank count to this file")
    p.add_argument("--timeout", type=int, default=600, help="seconds per launch")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_model(args):
    import torch

    layers, width = [], args.width
    for _ in range(args.layers):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def worker(args):
    import numpy as np
    import torch
    import torch.nn.functional as F

    import fusecomm.torch as hvd

    hvd.init()
    rank = hvd.rank()
    torch.manual_seed(0)
    bare_model, wrapped_model = build_model(args), build_model(args)
    wrapped_model.load_state_dict(bare_model.state_dict())
    bare = torch.optim.SGD(bare_model.parameters(), lr=0.01, momentum=0.9)
    wrapped = hvd.DistributedOptimizer(
        torch.optim.SGD(wrapped_model.parameters(), lr=0.01, momentum=0.9),
        named_parameters=wrapped_model.named_parameters())
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, args.width, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)

    def step(model, optimizer):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    kinds = [("bare", bare_model, bare), ("fusecomm", wrapped_model, wrapped)]
    samples = {name: [] for name, _, _ in kinds}
    for i in range(args.warmup + args.steps):
        for k in np.random.default_rng(i).permutation(len(kinds)):
            name, model, optimizer = kinds[k]
            hvd.barrier()
            t0 = time.perf_counter()
            step(model, optimizer)
            if i >= args.warmup:
                samples[name].append(time.perf_counter() - t0)
    row = {"ranks": hvd.size(), "steps": args.steps, "batch_size": args.batch_size,
           "width": args.width, "layers": args.layers}
    for name, s in samples.items():
        # the slowest rank's time of each step
        slowest = hvd.allreduce(torch.tensor(s, dtype=torch.float64), op=hvd.Max,
                                name=f"slowest.{name}").numpy()
        row[f"{name}_median_ms"] = float(np.median(slowest)) * 1e3
        row[f"{name}_p10_ms"] = float(np.percentile(slowest, 10)) * 1e3
    row["ratio_median"] = row["fusecomm_median_ms"] / row["bare_median_ms"]
    row["ratio_p10"] = row["fusecomm_p10_ms"] / row["bare_p10_ms"]
    if rank == 0:
        print(RESULT_TAG + json.dumps(row), flush=True)
    hvd.shutdown()


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    here = os.path.abspath(__file__)
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    print(f"{'ranks':>5} {'bare med':>9} {'p10':>8} {'wrapped med':>12} {'p10':>8} "
          f"{'ratio med':>10} {'ratio p10':>10}")
    failed = 0
    for n in args.ranks:
        # -P: the installed fusecomm, not a source checkout in the working directory
        cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", str(n), "--",
               sys.executable, "-P", here, "--worker"] + passed
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        rows = [json.loads(line[len(RESULT_TAG):]) for line in proc.stdout.splitlines()
                if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not rows:
            failed += 1
            print(f"{n} ranks failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                  file=sys.stderr)
            continue
        r = rows[0]
        print(f"{n:>5} {r['bare_median_ms']:>8.2f}ms {r['bare_p10_ms']:>6.2f}ms "
              f"{r['fusecomm_median_ms']:>10.2f}ms {r['fusecomm_p10_ms']:>6.2f}ms "
              f"{r['ratio_median']:>10.3f} {r['ratio_p10']:>10.3f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
