"""All-reduce algorithms across the shaped links of `fusecomm testbed` (needs root).

    python benchmarks/testbed_allreduce.py --out docs/bench/testbed [--configs 2x2,4x2]
        [--links 1gbit] [--max-bytes 64M] [--step-factor 8]

For each nodes x slots configuration and link rate: brings the testbed up, runs `fusecomm bench
allreduce`'s worker on it through `fusecomm testbed run` (every algorithm, auto and
MPI_Allreduce side by side, nccl-tests columns, the cost model's prediction beside each time;
the model is calibrated at init on the testbed itself), then fp32 against fp16 compression at
16 MiB, and takes the testbed down. Writes <out>/testbed_<N>x<K>_<link>.jsonl and .png and
prints, per size, each algorithm's time, busbw as a fraction of the link rate, the flat ring's
time over the best, auto's over the best, and the model's prediction over the measurement."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ALGORITHMS = "ring,rhd,hierarchical,hierarchical_scatter,torus2d,mpi,auto"
FP16_BYTES = 16 << 20  # the fp32 buffer; compression sends half of it


def fusecomm(*args, check=True):
    from fusecomm.runner import cli

    cmd = [sys.executable, cli.__file__, *map(str, args)]
    print("$ fusecomm", " ".join(map(str, args)), flush=True)
    return subprocess.run(cmd, check=check)


def compression_worker(path, algorithm):
    """fp32 all-reduce of a 16 MiB buffer, plain and with fp16 compression (cast to fp16, sent,
    cast back, as Compression.fp16 does), alternating, median of 15 each. One fixed algorithm
    for both: auto would spend the first rounds of each new size racing its candidates."""
    import fusecomm as hvd

    hvd.init()
    x = np.full(FP16_BYTES // 4, hvd.rank() + 1, np.float32)
    want = hvd.size() * (hvd.size() + 1) / 2
    plain, fp16 = [], []
    for i in range(17):
        t = time.perf_counter()
        out = hvd.allreduce(x, op=hvd.Sum, name="fp32", algorithm=algorithm)
        dt_plain = time.perf_counter() - t
        t = time.perf_counter()
        out16 = hvd.allreduce(x.astype(np.float16), op=hvd.Sum, name="fp16",
                              algorithm=algorithm).astype(np.float32)
        dt_fp16 = time.perf_counter() - t
        assert out[0] == want and out16[0] == want, (out[0], out16[0], want)
        if i >= 2:
            plain.append(dt_plain)
            fp16.append(dt_fp16)
    if hvd.rank() == 0:
        Path(path).write_text(json.dumps({"size": FP16_BYTES, "algorithm": algorithm,
                                          "fp32_us": float(np.median(plain)) * 1e6,
                                          "fp16_us": float(np.median(fp16)) * 1e6}) + "\n")
    hvd.shutdown()


def link_bytes_per_s(link):
    from fusecomm.runner import testbed

    return testbed.rate_bits(link) / 8


def summary(rows, link):
    """Markdown lines: per size, time (us) of each impl, ring/best, auto/best, busbw/link."""
    by_size = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["impl"].replace("fusecomm:", "")] = r
    impls = list(dict.fromkeys(r["impl"].replace("fusecomm:", "") for r in rows))
    fixed = [i for i in impls if i not in ("auto", "MPI_Allreduce", "horovod")]
    rate = link_bytes_per_s(link) / 1e9
    lines = ["| size | " + " | ".join(impls) + " | best | ring/best | auto/best | best busbw/link "
             "| model/measured (best) |",
             "|" + "---|" * (len(impls) + 6)]
    for size, at in sorted(by_size.items()):
        best = min(fixed, key=lambda a: at[a]["time_us"])
        b = at[best]
        lines.append(
            f"| {size} | " + " | ".join(f"{at[i]['time_us']:.0f}" for i in impls) +
            f" | {best} | {at['ring']['time_us'] / b['time_us']:.2f} | "
            f"{at['auto']['time_us'] / b['time_us']:.2f} | {b['busbw'] / rate:.2f} | "
            f"{b['predicted_us'] / b['time_us']:.2f} |")
    return lines


def plot_against_link(rows, link, title, path):
    """busbw as a fraction of the link rate, by size: 1.0 is a link kept busy all the time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = link_bytes_per_s(link) / 1e9
    fig, ax = plt.subplots(figsize=(8, 5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = [r for r in rows if r["impl"] == impl]
        ax.plot([p["size"] for p in pts], [p["busbw"] / rate for p in pts], marker="o",
                label=impl.replace("fusecomm:", ""))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=f"link rate ({link})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw / link rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--compression-worker":
        return compression_worker(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench/testbed")
    parser.add_argument("--configs", default="2x2", help="NODESxSLOTS, comma-separated")
    parser.add_argument("--links", default="1gbit", help="link rates, comma-separated")
    parser.add_argument("--min-bytes", default="8")
    parser.add_argument("--max-bytes", default="64M")
    parser.add_argument("--step-factor", default="8")
    parser.add_argument("--what", default="allreduce,fp16",
                        help="allreduce: every algorithm by size; fp16: compression at 16 MiB")
    parser.add_argument("--fp16-algorithm", default="hierarchical_scatter")
    parser.add_argument("--from-json", action="store_true", help="only print the summaries")
    args = parser.parse_args()
    from fusecomm.runner import bench

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for config in args.configs.split(","):
        nodes, slots = map(int, config.split("x"))
        for link in args.links.split(","):
            stem = out / f"testbed_{nodes}x{slots}_{link}"
            jsonl = stem.with_suffix(".jsonl")
            fp16_json = stem.with_name(stem.name + "_fp16.json")
            if not args.from_json:
                if "allreduce" in args.what:
                    jsonl.unlink(missing_ok=True)
                fusecomm("testbed", "up", "--nodes", nodes, "--slots", slots, "--link", link)
                try:
                    np_ = nodes * slots
                    if "allreduce" in args.what:
                        fusecomm("testbed", "run", "-np", np_, "--", sys.executable,
                                 bench.__file__, "--worker", "allreduce", "-np", np_,
                                 "--algorithms", ALGORITHMS, "-b", args.min_bytes,
                                 "-e", args.max_bytes, "-f", args.step_factor, "--quick",
                                 "--json", jsonl, "--plot", stem.with_suffix(".png"))
                    if "fp16" in args.what:
                        fusecomm("testbed", "run", "-np", np_, "--", sys.executable,
                                 Path(__file__).resolve(), "--compression-worker", fp16_json,
                                 args.fp16_algorithm)
                finally:
                    fusecomm("testbed", "down")
            if jsonl.exists():
                rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
                title = f"{nodes} nodes x {slots} slots, {link} links"
                print(f"\n{title} (times in us):\n")
                print("\n".join(summary(rows, link)))
                plot_against_link(rows, link, title, stem.with_name(stem.name + "_vs_link.png"))
            if fp16_json.exists():
                fp16 = json.loads(fp16_json.read_text())
                print(f"\n16 MiB fp32 ({fp16['algorithm']}): {fp16['fp32_us']:.0f} us, with fp16 "
                      f"compression: {fp16['fp16_us']:.0f} us "
                      f"({fp16['fp32_us'] / fp16['fp16_us']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
