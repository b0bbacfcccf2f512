"""Training throughput of three models under fusecomm (threshold fusion, layer-wise all-reduce,
MG-WFBP), Horovod and PyTorch DDP (Gloo), fp32 and fp16 gradient compression.

    python benchmarks/training_models.py [--ranks 1 2 4] [--runs 3] [--models mlp resnet18
        transformer] [--json docs/training_models.json] [--plot docs/training_models.png]

Models, defined here (no torchvision): an MLP; a ResNet-18-shaped network on 32x32 images (the
same four stages of two basic blocks, channels --cnn-width times 1, 2, 4, 8; 64 is the real
ResNet-18); a small transformer encoder language model. Synthetic data, a fixed batch per rank
(weak scaling), measured like Horovod's synthetic benchmark: untimed warm-up steps (enough for
MG-WFBP to learn its plan), then timed steps; the step time is the slowest rank's mean, and
throughput is images (MLP: samples; transformer: tokens) per second over all ranks.

Every variant runs in ONE mpirun launch per rank count, one after the other, each model and
compression in turn, the variants' order rotated from run to run; --runs launches per rank
count, alternated between rank counts. Reported: the median over runs, and each fusecomm
variant's step time over Horovod's and DDP's. Horovod is measured where it is importable (it is
never a dependency: a message says when it is skipped)."""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

from torch_training import launch_environment, timed_steps  # noqa: E402  (benchmarks/)

FUSION_PLANS = ("threshold", "layerwise", "mgwfbp")
VARIANTS = tuple(f"fusecomm:{p}" for p in FUSION_PLANS) + ("horovod", "ddp")
MODELS = ("mlp", "resnet18", "transformer")
COMPRESSIONS = ("fp32", "fp16")
RESULT_TAG = "RESULT "


def horovod_available():
    try:
        import horovod.torch  # noqa: F401

        return True
    except ImportError as e:
        print(f"Horovod is not importable here ({e}): measuring fusecomm and DDP only",
              file=sys.stderr)
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--runs", type=int, default=2, help="launches per rank count")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--compressions", nargs="+", choices=COMPRESSIONS, default=list(COMPRESSIONS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="default: every variant (Horovod where installed)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=12,
                   help="untimed steps first: MG-WFBP plans after its 5th step, and its new "
                        "buckets' sizes are then raced once by auto (half a second per size "
                        "class across 1 Gbit/s links), which must not land in the timed steps")
    p.add_argument("--batch-size", type=int, default=8, help="samples per rank per step")
    p.add_argument("--mlp-width", type=int, default=512)
    p.add_argument("--cnn-width", type=int, default=8, help="channels of the first stage")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank (0: cores / ranks, at least 1)")
    p.add_argument("--json", help="write every run and the summary to this JSON file")
    p.add_argument("--plot", help="write a PNG of throughput per model to this file")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per launch")
    p.add_argument("--testbed", action="store_true",
                   help="launch across the nodes of the `fusecomm testbed` that is up (root; "
                        "--ranks at most its nodes x slots), not on this machine directly")
    p.add_argument("--summarise", metavar="JSON",
                   help="report (and plot) the runs of an earlier --json file again, run nothing")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # run index
    return p.parse_args(argv)


# ---- models -----------------------------------------------------------------------------------

def build_mlp(args):
    import torch.nn as nn

    w = args.mlp_width
    return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))


def build_resnet18(args):
    import torch.nn as nn
    import torch.nn.functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    w = args.cnn_width
    layers = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
    for i, stride in enumerate([1, 2, 2, 2]):  # CIFAR-style ResNet-18: 2 blocks per stage
        cout = w * 2 ** i
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


VOCAB = 1000


def build_transformer(args):
    import torch
    import torch.nn as nn

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            d = args.d_model
            self.embed = nn.Embedding(VOCAB, d)
            self.position = nn.Parameter(torch.zeros(1, args.seq_len, d))
            layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 * d,
                                               batch_first=True, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(d, VOCAB)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens) + self.position))

    return TinyLM()


def synthetic_batch(model_name, args, rank):
    """(inputs, targets, loss function, units per rank per step, unit)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(rank)
    b = args.batch_size
    if model_name == "mlp":
        return (torch.randn(b, args.mlp_width, generator=g), torch.randint(0, 10, (b,), generator=g),
                F.cross_entropy, b, "samples")
    if model_name == "resnet18":
        return (torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g),
                F.cross_entropy, b, "images")
    tokens = torch.randint(0, VOCAB, (b, args.seq_len + 1), generator=g)

    def next_token_loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    return tokens[:, :-1], tokens[:, 1:], next_token_loss, b * args.seq_len, "tokens"


BUILDERS = {"mlp": build_mlp, "resnet18": build_resnet18, "transformer": build_transformer}


# ---- worker (one rank, under mpirun) ----------------------------------------------------------

def train_horovod_api(hvd, settings, model, batch, args, compression):
    """The same code for fusecomm.torch and horovod.torch (the one-line swap users make)."""
    import torch

    hvd.init(**settings)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none)

    def slowest(seconds):
        return hvd.allreduce(torch.tensor([seconds]), op=hvd.Max, name="slowest").item()

    try:
        return timed_steps(args, model, optimizer, batch, hvd.barrier, slowest)
    finally:
        hvd.shutdown()  # its background thread must not run during the next variant's turn


def train_ddp(model, batch, args, compression):
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model)
    if compression == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)

    def slowest(seconds):
        t = torch.tensor([seconds])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    return timed_steps(args, ddp, optimizer, batch, dist.barrier, slowest)


def run_variant(variant, model_name, compression, args, rank):
    import torch

    torch.manual_seed(0)
    model = BUILDERS[model_name](args)
    batch = synthetic_batch(model_name, args, rank)
    if variant.startswith("fusecomm:"):
        import fusecomm.torch as hvd

        step = train_horovod_api(hvd, {"fusion_plan": variant.split(":")[1]}, model, batch, args,
                                 compression)
    elif variant == "horovod":
        import horovod.torch as hvd

        step = train_horovod_api(hvd, {}, model, batch, args, compression)
    else:
        step = train_ddp(model, batch, args, compression)
    return step, sum(p.numel() for p in model.parameters()), batch[3], batch[4]


def worker(args):
    import torch
    import torch.distributed as dist

    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    threads = args.threads or max(1, (os.cpu_count() or 1) // size)
    torch.set_num_threads(threads)
    # MPI initialised once for the whole launch, so neither fusecomm's nor Horovod's shutdown
    # finalises it under the other; Gloo's group lives for the whole launch too.
    from mpi4py import MPI  # noqa: F401

    # A bounded rendezvous: a store that never answers (its port taken in between) is an error
    # here, not a launch that waits out torch's default 30 minutes.
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=120))
    # The variants' order rotates from run to run, so none always runs first (or last).
    shift = args.worker % len(args.variants)
    order = args.variants[shift:] + args.variants[:shift]
    for model_name in args.models:
        for compression in args.compressions:
            for variant in order:
                step, params, units, unit = run_variant(variant, model_name, compression, args,
                                                         rank)
                if rank == 0:
                    print(RESULT_TAG + json.dumps(dict(
                        model=model_name, compression=compression, variant=variant, ranks=size,
                        run=args.worker, threads=threads, step_time_s=step, params=params,
                        units_per_rank=units, unit=unit)), flush=True)
    dist.barrier()
    dist.destroy_process_group()


# ---- launcher ---------------------------------------------------------------------------------

def forwarded_options(args):
    out = []
    for key in ("steps", "warmup", "batch_size", "mlp_width", "cnn_width", "seq_len", "d_model",
                "threads"):
        out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return out + ["--models", *args.models, "--compressions", *args.compressions,
                  "--variants", *args.variants]


def testbed_launch(ranks, worker_cmd, env):
    """`fusecomm testbed run` of the worker: rank 0 runs on the first node, so Gloo's rendezvous
    is at that node's address, over the nodes' eth0 (the shaped links)."""
    from fusecomm.runner import testbed

    state = testbed.read_state()
    if not state or not testbed.is_complete(state):
        sys.exit("--testbed: no testbed is up (fusecomm testbed up --nodes N --slots K ...)")
    env.update(MASTER_ADDR=state["addresses"][state["nodes"][0]], GLOO_SOCKET_IFNAME="eth0")
    return [sys.executable, "-P", "-m", "fusecomm.runner.cli", "testbed", "run", "-np", str(ranks),
            "--mpi-args", "-x MASTER_ADDR -x MASTER_PORT -x GLOO_SOCKET_IFNAME -x PYTHONUNBUFFERED",
            "--", *worker_cmd]


def launch(args, ranks, run):
    mpirun, env = launch_environment()
    worker_cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(run),
                  *forwarded_options(args)]
    if args.testbed:
        cmd = testbed_launch(ranks, worker_cmd, env)
    else:
        # No core binding (as `fusecomm run`): Open MPI binds each of up to 2 ranks to one
        # core, and a 1-rank job's two PyTorch threads then share it (3.5x slower measured).
        cmd = [mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
               "-x", "MASTER_ADDR", "-x", "MASTER_PORT", *worker_cmd]
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"run {run} on {ranks} ranks did not finish in {args.timeout}s")
    rows = [json.loads(ln[len(RESULT_TAG):]) for ln in proc.stdout.splitlines()
            if ln.startswith(RESULT_TAG)]
    expected = len(args.models) * len(args.compressions) * len(args.variants)
    if proc.returncode != 0 or len(rows) != expected:
        sys.exit(f"run {run} on {ranks} ranks failed (exit {proc.returncode}):\n"
                 f"{proc.stdout[-4000:]}")
    for r in rows:
        r["throughput"] = r["units_per_rank"] * ranks / r["step_time_s"]
    return rows


def summarise(rows):
    """Median and best step time over runs per (model, compression, ranks, variant), with each
    fusecomm variant's ratios to Horovod and DDP (of medians, and of bests: on a shared machine
    the best run is the one least disturbed by other work)."""
    cells = {}
    for r in rows:
        key = (r["model"], r["compression"], r["ranks"])
        cells.setdefault(key, {}).setdefault(r["variant"], []).append(r)
    summary = []
    for (model, compression, ranks), by_variant in sorted(cells.items()):
        median = {v: statistics.median(x["step_time_s"] for x in rs)
                  for v, rs in by_variant.items()}
        best = {v: min(x["step_time_s"] for x in rs) for v, rs in by_variant.items()}
        for variant, rs in by_variant.items():
            entry = dict(model=model, compression=compression, ranks=ranks, variant=variant,
                         runs=len(rs), unit=rs[0]["unit"], step_time_s=median[variant],
                         best_step_time_s=best[variant],
                         throughput=rs[0]["units_per_rank"] * ranks / median[variant],
                         step_times_s=[x["step_time_s"] for x in rs])
            for peer in ("horovod", "ddp"):
                if peer in median and variant.startswith("fusecomm:"):
                    entry[f"vs_{peer}"] = median[variant] / median[peer]
                    entry[f"best_vs_{peer}"] = best[variant] / best[peer]
            summary.append(entry)
    return summary


def report(args, rows, summary):
    header = (f"{'model':<11} {'comp':<4} {'ranks':>5}  {'variant':<18} {'step ms':>8} "
              f"{'throughput/s':>14}  {'/horovod':>8} {'/ddp':>6}  {'best ms':>7} "
              f"{'/horovod':>8} {'/ddp':>6}  runs (ms)")
    print(header)
    print("-" * len(header))
    for e in summary:
        def ratios(prefix):
            return "  ".join(f"{e[prefix + k]:>6.2f}" if prefix + k in e else f"{'':>6}"
                             for k in ("vs_horovod", "vs_ddp"))
        runs = " ".join(f"{t * 1e3:.1f}" for t in e["step_times_s"])
        print(f"{e['model']:<11} {e['compression']:<4} {e['ranks']:>5}  {e['variant']:<18} "
              f"{e['step_time_s'] * 1e3:>8.1f} {e['throughput']:>9.0f} {e['unit']:<5} "
              f"  {ratios('')}  {e['best_step_time_s'] * 1e3:>7.1f}   {ratios('best_')}  {runs}")
    params = {r["model"]: r["params"] for r in rows}
    print(f"runs per cell: {max(e['runs'] for e in summary)}")
    print("parameters: " + ", ".join(f"{m} {n / 1e6:.2f}M" for m, n in params.items()) +
          f"; batch {args.batch_size} per rank; {args.warmup} warm-up + {args.steps} timed steps;"
          f" {os.cpu_count()} CPU cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="training_models", command=" ".join(sys.argv),
                           options={k: v for k, v in vars(args).items() if k != "worker"},
                           cpu_cores=os.cpu_count(), runs=rows, summary=summary), f, indent=1)
        print(f"results written to {args.json}")
    if args.plot:
        plot(args.plot, summary, args)


def plot(path, summary, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.compressions), len(args.models),
                             figsize=(4.2 * len(args.models), 3.4 * len(args.compressions)),
                             squeeze=False)
    width = 0.8 / len(args.variants)
    for row, compression in enumerate(args.compressions):
        for col, model in enumerate(args.models):
            ax = axes[row][col]
            for k, variant in enumerate(args.variants):
                cells = sorted((e for e in summary if e["model"] == model and
                                e["compression"] == compression and e["variant"] == variant),
                               key=lambda e: e["ranks"])
                xs = [args.ranks.index(e["ranks"]) + (k - len(args.variants) / 2 + 0.5) * width
                      for e in cells]
                ax.bar(xs, [e["throughput"] for e in cells], width, label=variant)
            unit = next((e["unit"] for e in summary if e["model"] == model), "samples")
            ax.set(title=f"{model}, {compression}", xlabel="ranks", ylabel=f"{unit}/s")
            ax.set_xticks(range(len(args.ranks)), [str(r) for r in args.ranks])
            ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")


def main():
    args = parse_args()
    if args.worker is not None:
        return worker(args)
    if args.summarise:
        with open(args.summarise) as f:
            earlier = json.load(f)
        for key in ("ranks", "models", "compressions", "variants", "batch_size", "warmup",
                    "steps"):
            setattr(args, key, earlier["options"][key])
        return report(args, earlier["runs"], summarise(earlier["runs"]))
    if args.variants is None:
        args.variants = [v for v in VARIANTS if v != "horovod" or horovod_available()]
    elif "horovod" in args.variants and not horovod_available():
        args.variants.remove("horovod")
    rows = []
    for run in range(args.runs):
        for ranks in args.ranks:  # alternated: every rank count once per round of runs
            print(f"run {run + 1}/{args.runs} on {ranks} ranks", file=sys.stderr, flush=True)
            rows += launch(args, ranks, run)
    report(args, rows, summarise(rows))


if __name__ == "__main__":
    main()
