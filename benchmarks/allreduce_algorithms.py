"""All-reduce algorithms side by side: every fusecomm algorithm, `auto`, and MPI_Allreduce
through mpi4py, at 2 and 4 ranks, with and without virtual nodes, 8 B to 256 MiB.

    python benchmarks/allreduce_algorithms.py --out docs/bench [--max-bytes 256M] [--quick]

Writes <out>/allreduce_<ranks>r_L<local>.jsonl and .png per configuration and prints a summary:
per size, the best fixed algorithm, what auto picked and its time relative to the best, and the
ring's time relative to MPI_Allreduce; then every algorithm's measured time beside the time the
cost model predicted for it."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ALGORITHMS = "ring,rhd,hierarchical,hierarchical_scatter,torus2d,mpi,auto"
CONFIGS = [(2, 0), (2, 1), (4, 0), (4, 2)]  # (ranks, virtual node size; 0 = the machine)


def run_config(ranks, local_size, out_dir, max_bytes, quick, from_json=False):
    stem = f"allreduce_{ranks}r_L{local_size or 'node'}"
    jsonl = out_dir / f"{stem}.jsonl"
    if from_json:
        return [json.loads(line) for line in jsonl.read_text().splitlines()]
    jsonl.unlink(missing_ok=True)
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "bench", "allreduce", "-np", str(ranks),
           "--algorithms", ALGORITHMS, "--max-bytes", max_bytes, "--json", str(jsonl),
           "--plot", str(out_dir / f"{stem}.png")]
    if local_size:
        cmd += ["--local-size", str(local_size)]
    if quick:
        cmd.append("--quick")
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def summarize(rows):
    """Lines of a markdown table: per size, the best fixed algorithm against auto and MPI, by
    the 10th percentile (the steadier statistic here, see fusecomm/runner/bench.py) and, for
    comparison, by the median. Returns the lines and auto's worst ratio by each."""
    lines = ["| size (B) | best fixed (p10) | its p10 (us) | auto picked | auto / best, p10 | "
             "auto / best, median | ring / MPI_Allreduce, median |",
             "|---:|---|---:|---|---:|---:|---:|"]
    worst = {"time_p10_us": 1.0, "time_us": 1.0}
    for size in sorted({r["size"] for r in rows}):
        at = {r["impl"]: r for r in rows if r["size"] == size}
        fixed = {k: v for k, v in at.items() if k.startswith("fusecomm:") and k != "fusecomm:auto"}
        auto = at["fusecomm:auto"]
        ratio = {}
        for stat in worst:
            best = min(v[stat] for v in fixed.values())
            ratio[stat] = auto[stat] / best
            worst[stat] = max(worst[stat], ratio[stat])
        best_name, best = min(fixed.items(), key=lambda kv: kv[1]["time_p10_us"])
        mpi = at.get("MPI_Allreduce")
        ring_vs_mpi = f"{at['fusecomm:ring']['time_us'] / mpi['time_us']:.2f}" if mpi else "n/a"
        lines.append(f"| {size} | {best_name.split(':')[1]} | {best['time_p10_us']:.1f} | "
                     f"{auto['picked']} | {ratio['time_p10_us']:.2f} | {ratio['time_us']:.2f} | "
                     f"{ring_vs_mpi} |")
    return lines, worst


def resolution(rows):
    """On one node `torus2d` (width = ranks per node = all ranks) runs exactly the ring's
    schedule, on a communicator of its own: how far apart the two measure is how finely this
    run can tell algorithms apart. (max ratio, by the 10th percentile and by the median), or
    None where the two are not the same schedule."""
    if rows[0]["local_size"] != rows[0]["ranks"]:
        return None
    worst = {"time_p10_us": 1.0, "time_us": 1.0}
    for size in {r["size"] for r in rows}:
        at = {r["impl"]: r for r in rows if r["size"] == size}
        for stat in worst:
            a, b = at["fusecomm:ring"][stat], at["fusecomm:torus2d"][stat]
            worst[stat] = max(worst[stat], a / b, b / a)
    return worst


def prediction_table(rows):
    """Lines of a markdown table: per size, each algorithm's measured (10th percentile) and
    predicted microseconds (the cost model, as calibrated at init in the same run)."""
    algorithms = [r["impl"].split(":")[1] for r in rows
                  if r["size"] == rows[0]["size"] and r["impl"].startswith("fusecomm:")
                  and r["impl"] != "fusecomm:auto"]
    lines = ["| size (B) | " + " | ".join(f"{a} p10 / pred" for a in algorithms) + " |",
             "|---:|" + "---:|" * len(algorithms)]
    for size in sorted({r["size"] for r in rows}):
        at = {r["impl"]: r for r in rows if r["size"] == size}
        cells = [f"{at['fusecomm:' + a]['time_p10_us']:.0f} / "
                 f"{at['fusecomm:' + a]['predicted_us']:.0f}"
                 for a in algorithms]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/bench")
    parser.add_argument("--max-bytes", default="256M")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--from-json", action="store_true",
                        help="summarize the JSON lines already in --out instead of running")
    parser.add_argument("--configs", default=",".join(f"{r}:{l}" for r, l in CONFIGS),
                        help="ranks:local_size,... (local_size 0 = the machine)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for item in args.configs.split(","):
        ranks, local_size = (int(x) for x in item.split(":"))
        rows = run_config(ranks, local_size, out_dir, args.max_bytes, args.quick, args.from_json)
        lines, worst = summarize(rows)
        report += [f"### {ranks} ranks, local size {rows[0]['local_size']}", "", *lines, "",
                   "auto's worst ratio to the best fixed algorithm: "
                   f"{worst['time_p10_us']:.2f} by the 10th percentile, "
                   f"{worst['time_us']:.2f} by the median", ""]
        same = resolution(rows)
        if same:
            report += ["Resolution of this run: `ring` and `torus2d` run the same schedule here "
                       f"and measured up to {same['time_p10_us']:.2f}x apart by the 10th "
                       f"percentile, {same['time_us']:.2f}x by the median.", ""]
        report += ["Measured against predicted (us):", "", *prediction_table(rows), ""]
    text = "\n".join(report)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
