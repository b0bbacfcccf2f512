"""`fusecomm simulate` against the all-reduce times the project measured.

Measurements: docs/bench/allreduce_*.jsonl (one machine, 2 and 4 ranks, shared memory) and
docs/bench/testbed/testbed_*.jsonl (`fusecomm testbed`: nodes joined by tbf-shaped links).

Parameters, fitted on as little as possible and then held fixed:
- intra-node α and β (γ folded into β): the 2-rank one-node ring (allreduce_2r_L1, 64 KiB and
  up) fitted to T = 2α + n·β in log error;
- inter-node β: the testbed's nominal link rate (1 or 10 Gbit/s per node, full duplex);
- inter-node α: the one value that best fits the 2x2 1 Gbit/s ring (log error, 64 KiB and up):
  the loaded machine's run for the earlier runs, the quiet one (ALPHA_FIT) for the quiet runs;
- the CPU (`--cores-per-node` and friends): the testbed's nodes are namespaces of one machine
  of MACHINE_CORES cores, so a node has MACHINE_CORES / nodes of them; the CPU's per-byte cost of
  moving data across nodes (copy_beta_inter: the TCP stack) and the per-call overhead are the
  pair that best fits one quiet run (CPU_FIT, the most CPU-bound one: 2x2 at 10 Gbit/s); inside
  a node shared memory is a CPU copy: copy_beta_intra = the fitted intra β.
Everything else (other algorithms, other configurations) is predicted, not fitted.

Quiet testbed runs (docs/simulate_testbed/, made one at a time after the machine's CI run
finished, as root, with

    FUSECOMM_CALIBRATION_FILE=$PWD/docs/simulate_testbed/cal_2x2_1gbit.txt \
      fusecomm testbed run -np 4 -- python -P fusecomm/runner/bench.py --worker allreduce \
      -np 4 --algorithms ring,rhd,hierarchical,hierarchical_scatter,torus2d -b 64K -e 64M -f 4 \
      --quick --json $PWD/docs/simulate_testbed/testbed_2x2_1gbit.jsonl

between `fusecomm testbed up` and `down`, the calibration file removed first so that fusecomm
measures it afresh) are predicted with the nominal links, with the nominal links and the CPU,
and from the calibration fusecomm measured at init in that very run (`--calibration`'s path),
with and without the fitted per-call overhead.

    python benchmarks/simulate_validation.py --out docs/simulate_validation.json
"""
import argparse
import dataclasses
import glob
import json
import os
import sys

import numpy as np

from fusecomm.simulate import Cluster, link_beta, simulate_allreduce

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ALGS = ("ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d")
MIN_BYTES = 64 << 10
MACHINE_CORES = 2  # nproc of the machine every run here was made on (testbed nodes share it)
CPU_FIT = "testbed_2x2_10gbit.jsonl"  # the quiet run the CPU's two parameters are fitted on
ALPHA_FIT = "testbed_2x2_1gbit.jsonl"  # the quiet run whose ring gives the inter α


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            impl = r["impl"].split(":")[-1]
            if r["impl"].startswith("fusecomm:") and impl in ALGS and r["size"] >= MIN_BYTES:
                rows[(impl, r["size"])] = r["time_us"] * 1e-6
    return rows


def fit_intra():
    rows = load(os.path.join(ROOT, "docs/bench/allreduce_2r_L1.jsonl"))
    sizes = sorted(s for a, s in rows if a == "ring")
    n = np.array(sizes, dtype=float)
    t = np.array([rows[("ring", s)] for s in sizes])
    best = None
    for alpha in np.geomspace(1e-6, 1e-3, 40):  # log error: small sizes count as much as large
        for beta in np.geomspace(1e-11, 1e-8, 60):
            score = float(np.sum(np.square(np.log((2 * alpha + n * beta) / t))))
            if best is None or score < best[0]:
                best = (score, alpha, beta)
    return best[1], best[2]


def predict(config, intra, alpha_inter, cpu=None, segment=512 << 10):
    """The cluster of `config` (nodes, k, inter β); with `cpu` (copy_beta_inter, call_overhead) the
    ranks share the machine's cores."""
    nodes, k, beta_inter = config
    cpu_options = {} if cpu is None else dict(
        cores_per_node=MACHINE_CORES / nodes, copy_beta_intra=intra[1], copy_beta_inter=cpu[0],
        call_overhead=cpu[1])
    return Cluster(nodes, k, alpha_intra=intra[0], beta_intra=intra[1], alpha_inter=alpha_inter,
                   beta_inter=beta_inter, gamma=0.0, segment_bytes=segment, **cpu_options)


def log_error(measured, cluster, algorithms=ALGS):
    """Sum of squared log errors of `cluster`'s predictions: small sizes count as much as
    large."""
    return float(sum(np.log(simulate_allreduce(cluster, s, a)["seconds"] / t) ** 2
                     for (a, s), t in measured.items() if a in algorithms))


def fit_cpu(measured, config, intra, alpha_inter):
    """(copy_beta_inter, call_overhead) that best fit `measured` (coordinate search on a grid)."""
    copies, overheads = np.geomspace(1e-11, 1e-7, 25), np.concatenate([[0], np.geomspace(
        1e-6, 3e-2, 25)])
    best = (copies[0], 0.0)
    for _ in range(3):
        best = (min(copies, key=lambda c: log_error(
                    measured, predict(config, intra, alpha_inter, (c, best[1])))), best[1])
        best = (best[0], min(overheads, key=lambda o: log_error(
                    measured, predict(config, intra, alpha_inter, (best[0], o)))))
    return best


def fit_alpha_inter(measured, intra, config):
    candidates = np.geomspace(1e-6, 5e-3, 60)
    best = None
    for a in candidates:
        score = log_error(measured, predict(config, intra, a), ("ring",))
        if best is None or score < best[1]:
            best = (a, score)
    return best[0]


CONFIGS = [  # name, file, (nodes, ranks per node, inter β)
    ("one node, 2 ranks (fit)", "docs/bench/allreduce_2r_L1.jsonl", (1, 2, None)),
    ("one node, 4 ranks", "docs/bench/allreduce_4r_Lnode.jsonl", (1, 4, None)),
    ("one machine, 2 virtual nodes x 2", "docs/bench/allreduce_4r_L2.jsonl", (2, 2, None)),
    ("testbed 2x2, 1 Gbit/s (α fit)", "docs/bench/testbed/testbed_2x2_1gbit.jsonl",
     (2, 2, link_beta("1gbit"))),
    ("testbed 3x2, 1 Gbit/s", "docs/bench/testbed/testbed_3x2_1gbit.jsonl",
     (3, 2, link_beta("1gbit"))),
    ("testbed 2x4, 1 Gbit/s", "docs/bench/testbed/testbed_2x4_1gbit.jsonl",
     (2, 4, link_beta("1gbit"))),
    ("testbed 2x2, 10 Gbit/s", "docs/bench/testbed/testbed_2x2_10gbit.jsonl",
     (2, 2, link_beta("10gbit"))),
]


def compare(name, measured, cluster):
    """Rows of predicted against measured per size and algorithm, and the order per size."""
    rows = []
    for size in sorted({s for _, s in measured}):
        here = {a: measured[(a, size)] for a in ALGS if (a, size) in measured}
        pred = {a: simulate_allreduce(cluster, size, a)["seconds"] for a in here}
        order_meas = sorted(here, key=here.get)
        order_pred = sorted(pred, key=pred.get)
        for a in here:
            rows.append({"config": name, "size": size, "algorithm": a,
                         "measured_s": here[a], "predicted_s": pred[a],
                         "error": pred[a] / here[a] - 1})
        rows.append({"config": name, "size": size, "algorithm": "(order)",
                     "measured_best": order_meas[0], "predicted_best": order_pred[0],
                     # Ties within the noise count: the predicted best measured within 10% of
                     # the measured best.
                     "best_matches": here[order_pred[0]] <= 1.1 * here[order_meas[0]],
                     "measured_order": order_meas, "predicted_order": order_pred})
    return rows


def summary_line(name, rows):
    errs = [abs(r["error"]) for r in rows if r["config"] == name and "error" in r]
    orders = [r for r in rows if r["config"] == name and r["algorithm"] == "(order)"]
    sizes = sorted({r["size"] for r in orders})
    return (f"| {name} | {_kib(sizes[0])}–{_kib(sizes[-1])} | {np.median(errs):.0%} | "
            f"{max(errs):.0%} | {sum(e <= 0.2 for e in errs)}/{len(errs)} | "
            f"{sum(r['best_matches'] for r in orders)}/{len(orders)} |")


def fresh_configs(directory, intra, alpha_inter, cpu):
    """(name, measured, cluster) for every testbed_NxK_LINK.jsonl in `directory`: with the
    nominal links, the nominal links and the CPU, and the calibration fusecomm measured on it
    (cal_NxK_LINK.txt)."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "testbed_*x*_*.jsonl"))):
        shape, link = os.path.basename(path)[len("testbed_"):-len(".jsonl")].split("_", 1)
        nodes, k = (int(v) for v in shape.split("x"))
        measured = load(path)
        name = f"quiet testbed {shape}, {link}"
        config = (nodes, k, link_beta(link))
        alpha_fit = " (α fit)" if os.path.basename(path) == ALPHA_FIT else ""
        out.append((name + ", nominal links" + alpha_fit, measured,
                    predict(config, intra, alpha_inter)))
        if cpu is not None:
            fitted = " (CPU fit)" if os.path.basename(path) == CPU_FIT else alpha_fit
            out.append((name + ", nominal links + CPU" + fitted, measured,
                        predict(config, intra, alpha_inter, cpu)))
        calibration = os.path.join(directory, f"cal_{shape}_{link}.txt")
        if os.path.exists(calibration):
            with open(calibration) as f:
                cluster = Cluster.from_calibration(f.read(), nodes, k)
            out.append((name + ", its calibration", measured, cluster))
            if cpu is not None:  # the calibration's links, measured with the cores shared
                out.append((name + ", its calibration + CPU overhead", measured,
                            dataclasses.replace(cluster, call_overhead=cpu[1],
                                                cores_per_node=MACHINE_CORES / nodes)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--figure", help="also draw the ResNet-50 scaling figure here (PNG)")
    parser.add_argument("--fresh", default=os.path.join(ROOT, "docs/simulate_testbed"),
                        help="a directory of new testbed runs (testbed_allreduce.py --out DIR, "
                             "run with FUSECOMM_CALIBRATION_FILE=DIR/cal_NxK_LINK.txt)")
    args = parser.parse_args(argv)
    intra = fit_intra()
    testbed_fit = load(os.path.join(ROOT, CONFIGS[3][1]))
    alpha_inter = fit_alpha_inter(testbed_fit, intra, CONFIGS[3][2])
    print(f"fitted: intra α={intra[0]:.3g} s β={intra[1]:.3g} s/B; inter α={alpha_inter:.3g} s; "
          f"inter β = the link's nominal rate")
    cpu, alpha_quiet = None, alpha_inter
    cpu_fit, alpha_fit = (os.path.join(args.fresh, name) for name in (CPU_FIT, ALPHA_FIT))
    if os.path.exists(alpha_fit):
        alpha_quiet = fit_alpha_inter(load(alpha_fit), intra, CONFIGS[3][2])
        print(f"fitted on the quiet {ALPHA_FIT}'s ring: inter α={alpha_quiet:.3g} s")
    if os.path.exists(cpu_fit):
        config = (2, 2, link_beta(CPU_FIT.split("_")[-1][:-len(".jsonl")]))
        cpu = fit_cpu(load(cpu_fit), config, intra, alpha_quiet)
        print(f"fitted on {CPU_FIT}: CPU copy {cpu[0]:.3g} s/B, {cpu[1]:.3g} s per call, "
              f"{MACHINE_CORES} cores shared by the testbed's nodes")
    configs = []
    for name, path, (nodes, k, beta_inter) in CONFIGS:
        config = (nodes, k, beta_inter if beta_inter is not None else intra[1])
        a_inter = alpha_inter if beta_inter is not None else intra[0]
        configs.append((name, load(os.path.join(ROOT, path)), predict(config, intra, a_inter)))
    if os.path.isdir(args.fresh):
        configs += fresh_configs(args.fresh, intra, alpha_quiet, cpu)
    rows = []
    print("| configuration | sizes | median abs error | max abs error | within 20% | "
          "predicted best within 10% of measured best |")
    print("|---|---|---:|---:|---:|---:|")
    for name, measured, cluster in configs:
        rows += compare(name, measured, cluster)
        print(summary_line(name, rows))
    if args.figure:
        resnet50_figure(args.figure)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"intra_alpha": intra[0], "intra_beta": intra[1],
                       "inter_alpha": alpha_inter,
                       "quiet_inter_alpha": alpha_quiet, "cpu_copy_beta": cpu and cpu[0],
                       "cpu_call_overhead": cpu and cpu[1], "machine_cores": MACHINE_CORES,
                       "rows": rows}, f, indent=1)
    return 0


def resnet50_figure(path):
    """Predicted all-reduce time of ResNet-50's gradient (25,557,032 fp32 parameters, one fused
    buffer) vs GPUs on the V100/EDR preset, per algorithm; returns the rows."""
    from fusecomm.simulate import PRESETS, resnet50_gradients
    from fusecomm.simulate.cli import plot

    nbytes = 4 * sum(g.elems for g in resnet50_gradients())
    rows = []
    for p in [8 << i for i in range(10)]:
        cluster = Cluster.for_ranks(p, 8, **PRESETS["v100-edr"])
        for a in ALGS + ("auto",):
            rows.append(simulate_allreduce(cluster, nbytes, a))
        if p >= 64:
            row = simulate_allreduce(cluster, nbytes, "torus2d", torus_x=32)
            rows.append(dict(row, algorithm="torus2d X=32"))
    plot(rows, path, by_ranks=True,
         title=f"ResNet-50 gradient ({nbytes / 1e6:.0f} MB fp32), 8 V100/node: NVLink "
               f"β=1e-11 s/B, EDR 100 Gbit/s β=8e-11 s/B, α=5 µs")
    for p in sorted({r["ranks"] for r in rows}):
        here = {r["algorithm"]: r for r in rows if r["ranks"] == p}
        ranked = sorted((r["seconds"], a) for a, r in here.items() if a != "auto")
        print(f"{p:5d} GPUs: " + ", ".join(f"{a} {t * 1e3:.2f} ms ({here[a]['steps']} steps)"
                                          for t, a in ranked)
              + f"; auto -> {here['auto']['picked']}")
    return rows


def _kib(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


if __name__ == "__main__":
    sys.exit(main())
