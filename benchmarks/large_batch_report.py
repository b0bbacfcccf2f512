"""Tables and curves for docs/large_batch.md from examples/large_batch.py's --json output.

    python benchmarks/large_batch_report.py RUNS.jsonl --label "32x, 24 epochs" \\
        --plot docs/large_batch_32x.png >> table.md

Prints a Markdown table (per configuration: mean and standard deviation over seeds of the final
and best test accuracy, the gap to the small batch, steps and seconds) and, with --plot, draws
the mean test-accuracy curve of each configuration per epoch."""
import argparse
import collections
import json

import numpy as np

LABELS = {"small": "small batch B, momentum SGD",
          "sgd": "(a) large, momentum SGD + linear scaling",
          "recipe": "(b) large, LARS + warm-up + label smoothing + no decay on bias/norm",
          "lamb": "(b') large, LAMB + the same recipe",
          "control": "(c) batch-size control B -> 4B -> large",
          "adasum": "(d) large, Adasum of the ranks' SGD steps"}


def load(path):
    runs = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                run = json.loads(line)
                runs[run["config"]].append(run)
    return runs


def table(runs):
    small = np.mean([r["final_test_accuracy"] for r in runs["small"]]) if runs["small"] else None
    lines = ["| configuration | batch | seeds | final acc. (mean ± sd) | gap to small | "
             "best acc. | steps | train s |", "|---|---|---|---|---|---|---|---|"]
    for config, label in LABELS.items():
        if config not in runs:
            continue
        rs = runs[config]
        final = np.array([r["final_test_accuracy"] for r in rs]) * 100
        best = np.array([r["best_test_accuracy"] for r in rs]) * 100
        batches = sorted({h["batch"] for r in rs for h in r["history"]})
        batch = " -> ".join(map(str, batches))
        gap = "" if small is None else f"{final.mean() - small * 100:+.2f}"
        lines.append(f"| {label} | {batch} | {len(rs)} | {final.mean():.2f} ± {final.std():.2f} | "
                     f"{gap} | {best.mean():.2f} | {rs[0]['steps']} | "
                     f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(lines)


def plot(runs, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    lowest = 100.0
    for config, label in LABELS.items():
        if config not in runs:
            continue
        curves = np.array([[h["test_accuracy"] for h in r["history"]] for r in runs[config]])
        epochs = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(0) * 100
        lowest = min(lowest, float(mean[len(mean) // 2:].min()))
        ax.plot(epochs, mean, label=label, linestyle="--" if config == "small" else "-")
        ax.fill_between(epochs, curves.min(0) * 100, curves.max(0) * 100, alpha=0.12)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds; band: min-max")
    ax.set_ylim(min(80.0, lowest - 5.0), 100)  # the second half of every mean curve in view
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("--plot")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    runs = load(args.runs)
    print(table(runs))
    if args.plot:
        plot(runs, args.plot, f"digits, 4 ranks: {args.label}")


if __name__ == "__main__":
    main()
