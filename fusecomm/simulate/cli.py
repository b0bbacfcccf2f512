"""`fusecomm simulate`: predicted all-reduce and training-step communication on a described
cluster. One JSON object per line with --json, a table otherwise; --plot draws it."""
import dataclasses
import json
import math
import os
import sys

from fusecomm.simulate import api
from fusecomm.simulate.cluster import PRESETS, Cluster, link_beta
from fusecomm.simulate.schedules import ALGORITHMS
from fusecomm.simulate.workloads import MODELS, V100_RESNET50_BACKWARD_S, parse_size, parse_sizes


def add_arguments(parser):
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--ranks", default=None,
                         help="GPUs: N, a list N,M,... or a sweep LO:HI (powers of two); default "
                              "nodes x gpus-per-node")
    cluster.add_argument("--nodes", type=int, default=2)
    cluster.add_argument("--gpus-per-node", type=int, default=8)
    cluster.add_argument("--preset", choices=sorted(PRESETS), default="default",
                         help="links: default = fusecomm's uncalibrated cost model (α 5 µs, "
                              "β 2e-10 s/B, γ 1e-10 s/B); v100-edr = NVLink ~100 GB/s, EDR IB "
                              "100 Gbit/s (docs/simulate.md)")
    cluster.add_argument("--calibration", metavar="FILE",
                         help="links from a calibration fusecomm measured "
                              "(FUSECOMM_CALIBRATION_FILE, `fusecomm bench calibrate`)")
    for name in ("alpha-intra", "beta-intra", "alpha-inter", "beta-inter", "gamma"):
        cluster.add_argument(f"--{name}", type=float, help="override (seconds, per byte for β/γ)")
    cluster.add_argument("--inter-link", help="NIC rate, e.g. 100gbit (sets beta-inter)")
    cluster.add_argument("--intra-link", help="per-GPU intra-node rate, e.g. 100GB/s")
    cluster.add_argument("--segment-bytes", type=parse_size, default=None,
                         help="pipeline segment (default fusecomm's 512K; 0: whole messages)")
    cluster.add_argument("--cores-per-node", type=float, default=None,
                         help="CPU cores a node's ranks share (may be fractional); more ranks "
                              "than cores slow their CPU work. Default: unlimited, or this "
                              "machine's os.cpu_count() with --calibration (measured here)")
    for where in ("intra", "inter"):
        cluster.add_argument(f"--copy-beta-{where}", type=float, default=0.0,
                             help=f"CPU seconds per byte a rank sends or receives {where}-node "
                                  f"(default 0)")
    cluster.add_argument("--call-overhead", type=float, default=0.0,
                         help="CPU seconds of software per all-reduce call (default 0)")
    cluster.add_argument("--no-contention", action="store_true",
                         help="flows through one NIC do not share it (for comparison)")
    work = parser.add_argument_group("workload")
    work.add_argument("--algorithms", default=",".join(ALGORITHMS + ("auto",)),
                      help="comma-separated: " + ", ".join(ALGORITHMS + ("auto",)))
    work.add_argument("--torus-x", type=int, help="torus2d row width X (default: node size)")
    work.add_argument("--size", default="64K:256M",
                      help="bytes per all-reduce: 100M, 64K,1M or a sweep 64K:256M")
    work.add_argument("--fp16", action="store_true", help="half-precision elements on the wire")
    work.add_argument("--model", choices=sorted(MODELS),
                      help="simulate a training step's gradients instead of sizes")
    work.add_argument("--backward-time", type=float, default=V100_RESNET50_BACKWARD_S,
                      help="seconds of backward for --model (split by layer FLOPs)")
    work.add_argument("--fusion-threshold", type=parse_size, default=64 << 20)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--plot", metavar="PNG", help="time vs ranks (or size) per algorithm")
    out.add_argument("--timeline", metavar="PNG",
                     help="the first algorithm's rounds over time, at the first size and ranks")


def parse_ranks(text):
    if ":" in text:
        lo, hi = (int(v) for v in text.split(":"))
        if lo < 1 or hi < lo:
            raise ValueError(f"--ranks {text!r}: expected LO:HI with 1 <= LO <= HI")
        return [1 << i for i in range(math.ceil(math.log2(lo)), int(math.log2(hi)) + 1)]
    return [int(v) for v in text.split(",") if v.strip()]


def build_cluster(args, ranks):
    links = dict(PRESETS[args.preset])
    # Not links: these stay when a calibration gives the links.
    options = dict(nic_contention=not args.no_contention, copy_beta_intra=args.copy_beta_intra,
                   copy_beta_inter=args.copy_beta_inter,
                   call_overhead=args.call_overhead, cores_per_node=args.cores_per_node)
    if args.segment_bytes is not None:
        options["segment_bytes"] = args.segment_bytes
    if args.calibration:
        if options["cores_per_node"] is None:
            options["cores_per_node"] = os.cpu_count()
        with open(args.calibration) as f:
            cluster = Cluster.from_calibration(f.read(), 0, args.gpus_per_node, ranks=ranks,
                                               **options)
    else:
        cluster = Cluster.for_ranks(ranks, args.gpus_per_node, **links, **options)
    overrides = {name.replace("-", "_"): getattr(args, name.replace("-", "_"))
                 for name in ("alpha-intra", "beta-intra", "alpha-inter", "beta-inter", "gamma")}
    if args.inter_link:
        overrides["beta_inter"] = link_beta(args.inter_link)
    if args.intra_link:
        overrides["beta_intra"] = link_beta(args.intra_link)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cluster = dataclasses.replace(cluster, calibration=None, **overrides)
    return cluster


def _table(rows, columns):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plot(rows, path, by_ranks, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = "ranks" if by_ranks else "size"
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        ax.plot([r[key] for r in mine], [r["seconds"] for r in mine], marker="o", ms=3,
                label=algorithm, linestyle="--" if algorithm == "auto" else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs" if by_ranks else "bytes")
    ax.set_ylabel("predicted all-reduce time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeline(row, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(p for p, _, _ in row["timeline"]))
    fig, ax = plt.subplots(figsize=(8, 1 + 0.5 * len(phases)))
    for i, (phase, start, end) in enumerate(row["timeline"]):
        ax.barh(phases.index(phase), end - start, left=start, height=0.6,
                color=f"C{phases.index(phase)}", alpha=0.7)
    ax.set_yticks(range(len(phases)), phases)
    ax.set_xlabel("seconds")
    ax.set_title(f"{row['picked']} on {row['ranks']} GPUs, {row['size']} B: "
                 f"{row['steps']} steps, {row['seconds']:.3g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args):
    try:
        ranks_list = parse_ranks(args.ranks) if args.ranks else [args.nodes * args.gpus_per_node]
        algorithms = [a for a in args.algorithms.split(",") if a]
        for a in algorithms:
            if a not in ALGORITHMS + ("auto",):
                raise ValueError(f"unknown algorithm {a!r}; expected one of "
                                 f"{', '.join(ALGORITHMS + ('auto',))}")
        clusters = [build_cluster(args, p) for p in ranks_list]
        elem = 2 if args.fp16 else 4
        rows = []
        if args.model:
            gradients = MODELS[args.model](args.backward_time)
            for cluster in clusters:
                for algorithm in algorithms:
                    rows += api.simulate_training_step(cluster, gradients, algorithm,
                                                       args.torus_x, args.fp16,
                                                       threshold=args.fusion_threshold)
            columns = ["plan", "algorithm", "ranks", "fp16", "buckets", "comm_s", "exposed_s",
                       "step_s"]
        else:
            sizes = parse_sizes(args.size)
            for cluster in clusters:
                rows += api.sweep(cluster, sizes, algorithms, torus_x=args.torus_x,
                                  elem_size=elem)
            columns = ["algorithm", "picked", "ranks", "size", "steps", "seconds",
                       "bytes_per_rank", "bytes_per_link"]
            if args.timeline:
                plot_timeline(api.simulate_allreduce(clusters[0], sizes[0], algorithms[0],
                                                     args.torus_x, elem, timeline=True),
                              args.timeline)
    except (ValueError, OSError) as e:
        print(f"fusecomm simulate: {e}", file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(json.dumps({k: (float(v) if isinstance(v, float) else v)
                              for k, v in row.items()}))
    else:
        print(clusters[0].describe())
        print(_table(rows, columns))
    if args.plot and not args.model:
        plot(rows, args.plot, by_ranks=len(ranks_list) > 1, title=clusters[0].describe())
    return 0
