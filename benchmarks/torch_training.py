"""Training throughput of one model with fusecomm's DistributedOptimizer, with PyTorch's
DistributedDataParallel (Gloo) and, where it is installed, with Horovod's DistributedOptimizer,
at several rank counts.

    python benchmarks/torch_training.py [--ranks 1 2 4] [--json out.jsonl] [--plot out.png]

The script launches itself under mpirun once per rank count; each launch trains an MLP on
synthetic data (weak scaling: a fixed batch per rank) with each framework in turn, and rank 0
reports the slowest rank's mean step time. Printed: ranks, framework, step time, samples/s,
and scaling efficiency (samples/s at n ranks over n times samples/s at 1 rank, per
framework)."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from throughput_plot import plot_throughput  # noqa: E402  (benchmarks/)

FRAMEWORKS = ("fusecomm", "ddp", "horovod")


def default_frameworks():
    try:  # Horovod is a peer to measure against where installed, never a dependency
        import horovod.torch  # noqa: F401

        return list(FRAMEWORKS)
    except ImportError:
        return ["fusecomm", "ddp"]
RESULT_TAG = "RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=None,
                   help="default: fusecomm, ddp, and horovod when it is installed")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=32, help="samples per rank per step")
    p.add_argument("--width", type=int, default=1024, help="input and hidden width")
    p.add_argument("--layers", type=int, default=3, help="hidden layers")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank (0: cores / ranks, at least 1)")
    p.add_argument("--json", help="append one JSON line per run to this file")
    p.add_argument("--plot", help="write a PNG of throughput and efficiency to this file")
    p.add_argument("--timeout", type=int, default=300, help="seconds per launch")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # comma-separated frameworks
    return p.parse_args(argv)


# ---- worker (one rank, under mpirun) ----------------------------------------------------------

def build_model(args):
    import torch.nn as nn

    layers, width = [], args.width
    for _ in range(args.layers):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def worker(args):
    """Runs every requested framework in turn in this launch (one Python start-up per rank
    count instead of one per framework)."""
    import torch

    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    threads = args.threads or max(1, (os.cpu_count() or 1) // size)
    torch.set_num_threads(threads)
    frameworks = args.worker.split(",")
    if "horovod" in frameworks:
        # MPI initialised once for the whole launch, so neither fusecomm's nor Horovod's
        # shutdown finalises it under the other.
        from mpi4py import MPI  # noqa: F401
    trainers = {"fusecomm": train_fusecomm, "ddp": train_ddp, "horovod": train_horovod}
    for framework in frameworks:
        step_time, params = trainers[framework](args, rank, size)
        if rank == 0:
            print(RESULT_TAG + json.dumps(dict(framework=framework, ranks=size, threads=threads,
                                               step_time_s=step_time, model_params=params)),
                  flush=True)


def timed_steps(args, model, optimizer, batch, barrier, slowest):
    """The slowest rank's mean step time over args.steps steps, after args.warmup; `batch` is
    (inputs, targets, loss function, ...)."""
    x, y, loss_fn = batch[:3]

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return slowest((time.perf_counter() - start) / args.steps)


def timed_training(args, rank, model, optimizer, barrier, slowest):
    """Mean step time of the slowest rank over args.steps steps, after args.warmup."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, args.width, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    return (timed_steps(args, model, optimizer, (x, y, F.cross_entropy), barrier, slowest),
            sum(p.numel() for p in model.parameters()))


def train_fusecomm(args, rank, size):
    import fusecomm.torch as hvd

    return train_with_horovod_api(hvd, args, rank)


def train_horovod(args, rank, size):
    import horovod.torch as hvd

    return train_with_horovod_api(hvd, args, rank)


def train_with_horovod_api(hvd, args, rank):
    """The same script for fusecomm.torch and horovod.torch: the one-line swap users make."""
    import torch

    hvd.init()
    torch.manual_seed(0)
    model = build_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def slowest(seconds):
        return hvd.allreduce(torch.tensor([seconds]), op=hvd.Max, name="slowest").item()

    result = timed_training(args, rank, model, optimizer, hvd.barrier, slowest)
    hvd.shutdown()  # its background thread must not run during the next framework's turn
    return result


def train_ddp(args, rank, size):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size)
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(args))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def slowest(seconds):
        t = torch.tensor([seconds])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    result = timed_training(args, rank, model, optimizer, dist.barrier, slowest)
    # Tear DDP down while every rank is still inside Gloo: a rank that moves on to MPI calls
    # (fusecomm's turn, or MPI_Finalize at exit) must not leave a peer's teardown waiting on it.
    del model, optimizer
    dist.barrier()
    dist.destroy_process_group()
    return result


# ---- launcher ---------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_environment():
    """mpirun, and the environment its ranks need for MPI and for Gloo's rendezvous."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("mpirun is not on PATH (Open MPI is needed to launch the ranks)")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               PYTHONUNBUFFERED="1")
    # Ranks may outnumber cores: yield in MPI waits instead of spinning.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return mpirun, env


def launch(args, ranks):
    mpirun, env = launch_environment()
    forwarded = ["--steps", args.steps, "--warmup", args.warmup, "--batch-size", args.batch_size,
                 "--width", args.width, "--layers", args.layers, "--threads", args.threads]
    # No core binding (as `fusecomm run`): Open MPI binds each of up to 2 ranks to one core,
    # and a 1-rank job's two PyTorch threads then share that core (3.5x slower measured).
    cmd = [mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(ranks), "-x",
           "MASTER_ADDR", "-x", "MASTER_PORT",
           sys.executable, os.path.abspath(__file__), "--worker", ",".join(args.frameworks),
           *map(str, forwarded)]
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"the run on {ranks} ranks did not finish in {args.timeout}s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or len(lines) != len(args.frameworks):
        sys.exit(f"the run on {ranks} ranks failed (exit {proc.returncode}):\n"
                 f"{proc.stdout[-4000:]}")
    return [json.loads(line[len(RESULT_TAG):]) for line in lines]


def report(args, results):
    base = {r["framework"]: r["samples_per_s"] for r in results if r["ranks"] == 1}
    header = f"{'ranks':>5}  {'framework':<9}  {'step time ms':>12}  {'samples/s':>10}  " \
             f"{'scaling eff.':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        one = base.get(r["framework"])
        r["scaling_efficiency"] = r["samples_per_s"] / (r["ranks"] * one) if one else None
        eff = f"{r['scaling_efficiency']:.2f}" if one else "n/a"
        print(f"{r['ranks']:>5}  {r['framework']:<9}  {r['step_time_s'] * 1e3:>12.1f}  "
              f"{r['samples_per_s']:>10.1f}  {eff:>12}")
    print(f"model: MLP {args.layers}x{args.width}, {results[0]['model_params'] / 1e6:.2f}M "
          f"parameters, batch {args.batch_size} per rank, {args.steps} timed steps; "
          f"{os.cpu_count()} CPU cores")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(dict(benchmark="torch_training", batch_per_rank=args.batch_size,
                                        steps=args.steps, **r)) + "\n")
    if args.plot:
        plot(args.plot, results)


def plot(path, results):
    plot_throughput(path, results, FRAMEWORKS, "PyTorch training throughput", "scaling_efficiency")


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    args.frameworks = args.frameworks or default_frameworks()
    results = []
    for ranks in args.ranks:
        for r in launch(args, ranks):
            r["samples_per_s"] = args.batch_size * ranks / r["step_time_s"]
            results.append(r)
    report(args, results)


if __name__ == "__main__":
    main()
