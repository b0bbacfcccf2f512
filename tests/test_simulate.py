"""`fusecomm simulate`: the event model against the closed forms, step counts, contention, uneven
grids, the CLI's JSON, calibration files, and the fusion plans (single process, fast)."""
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fusecomm.simulate import (Cluster, closed_form_seconds, parse_sizes, resnet50_gradients,
                               selector_seconds, simulate_allreduce, simulate_training_step)
from fusecomm.simulate.closed_form import auto_candidates, auto_choice
from fusecomm.simulate.plans import evaluate_plans

# One segment per message: the closed forms assume whole messages.
WHOLE = dict(segment_bytes=0)


def test_step_counts_of_the_papers():
    """Mikami et al.'s 2176 = 32 x 68 grid and a ring over the same ranks (issue 18)."""
    cluster = Cluster.for_ranks(2176, 4)
    torus = simulate_allreduce(cluster, 1 << 20, "torus2d", torus_x=32)
    assert torus["steps"] == 2 * 31 + 2 * 67 == 196
    ring = simulate_allreduce(cluster, 1 << 20, "ring")
    assert ring["steps"] == 2 * 2175 == 4350
    for p, x, steps in ((1024, 32, 124), (4096, 64, 252)):  # docs/algorithms.md
        assert simulate_allreduce(Cluster.for_ranks(p, 8), 1 << 16, "torus2d",
                                  torus_x=x)["steps"] == steps


@pytest.mark.parametrize("p", [2, 3, 4, 8, 16])
def test_ring_and_rhd_match_closed_form_on_one_node(p):
    cluster = Cluster(1, p, alpha_intra=3e-6, beta_intra=4e-10, gamma=1e-10, **WHOLE)
    n = 4 * p * 1000  # splits evenly into p blocks of whole float32 elements
    ring = simulate_allreduce(cluster, n, "ring")
    assert ring["seconds"] == pytest.approx(closed_form_seconds("ring", cluster, n), rel=1e-9)
    assert ring["bytes_per_rank"] == 2 * n * (p - 1) / p
    if p & (p - 1) == 0:
        rhd = simulate_allreduce(cluster, n, "rhd")
        assert rhd["seconds"] == pytest.approx(closed_form_seconds("rhd", cluster, n), rel=1e-9)
        assert rhd["steps"] == 2 * int(math.log2(p))
    else:  # fold + unfold: two more steps for the folded ranks
        assert simulate_allreduce(cluster, n, "rhd")["steps"] == 2 * int(math.log2(p)) + 2


@pytest.mark.parametrize("nodes,k", [(2, 2), (4, 2), (2, 4), (4, 8), (16, 4)])
@pytest.mark.parametrize("algorithm", ["hierarchical", "hierarchical_scatter", "torus2d"])
def test_two_level_schemes_match_closed_form(nodes, k, algorithm):
    cluster = Cluster(nodes, k, alpha_intra=2e-6, beta_intra=1e-10, alpha_inter=2e-5,
                      beta_inter=8e-10, gamma=5e-11, **WHOLE)
    n = 4 * nodes * k * 512
    got = simulate_allreduce(cluster, n, algorithm)["seconds"]
    assert got == pytest.approx(closed_form_seconds(algorithm, cluster, n), rel=1e-9)


def test_ring_across_nodes_matches_closed_form_when_links_alike():
    cluster = Cluster(4, 4, alpha_intra=7e-6, beta_intra=3e-10, alpha_inter=7e-6,
                      beta_inter=3e-10, **WHOLE)
    n = 4 * 16 * 300
    assert simulate_allreduce(cluster, n, "ring")["seconds"] == pytest.approx(
        closed_form_seconds("ring", cluster, n), rel=1e-9)


def test_nic_contention_slows_the_shared_cross_node_phase():
    """hierarchical_scatter's cross-node phase runs k flows through each NIC at once: its
    bandwidth term is k times what one flow alone pays. The ring crosses each node boundary
    with one flow only and does not change."""
    base = dict(nodes=4, gpus_per_node=4, beta_intra=1e-11, beta_inter=1e-9, **WHOLE)
    shared, free = Cluster(**base), Cluster(**base, nic_contention=False)
    n = 64 << 20
    hs_shared = simulate_allreduce(shared, n, "hierarchical_scatter")["seconds"]
    hs_free = simulate_allreduce(free, n, "hierarchical_scatter")["seconds"]
    cross_bytes = 2 * (n / 4) * 3 / 4  # the shard ring's bytes per flow
    assert hs_shared - hs_free == pytest.approx(cross_bytes * 1e-9 * (4 - 1), rel=1e-6)
    assert simulate_allreduce(shared, n, "ring")["seconds"] == pytest.approx(
        simulate_allreduce(free, n, "ring")["seconds"])
    # Every rank's exchange across nodes at once (rhd's wide rounds) contends too.
    assert (simulate_allreduce(shared, n, "rhd")["seconds"]
            > 2 * simulate_allreduce(free, n, "rhd")["seconds"])


def test_segments_pipeline_up_to_the_busiest_port():
    """Segmented, the tree forwards a segment while the next arrives, so the rounds overlap and
    only the busiest port's bytes remain: node leader of 2 x 4 takes in 2n (tree), moves n
    (leaders' ring) and sends 2n (broadcast) = 5n. Whole messages add each round's wait."""
    n, beta = 64 << 20, 1e-9
    links = dict(alpha_intra=5e-6, alpha_inter=5e-6, beta_inter=beta, beta_intra=beta, gamma=0)
    whole = simulate_allreduce(Cluster(2, 4, **links, **WHOLE), n, "hierarchical")["seconds"]
    seg = simulate_allreduce(Cluster(2, 4, **links, segment_bytes=512 << 10), n,
                             "hierarchical")["seconds"]
    assert seg == pytest.approx(5 * n * beta, rel=0.02)
    assert seg < whole
    # The ring: every round's port time is the same either way; segments cannot beat it.
    ring_whole = simulate_allreduce(Cluster(1, 8, **links, **WHOLE), n, "ring")["seconds"]
    ring_seg = simulate_allreduce(Cluster(1, 8, **links), n, "ring")["seconds"]
    assert 2 * n * 7 / 8 * beta <= ring_seg <= ring_whole


@pytest.mark.parametrize("p,x", [(10, 4), (7, 3), (2176, 32), (30, 8)])
def test_uneven_torus_grid(p, x):
    """p = F·X + t: the t ranks of the partial row fold into the row above (2 more steps for
    them); the rest is the F x X grid."""
    cluster = Cluster.for_ranks(p, x, **WHOLE)
    full_rows, t = divmod(p, x)
    row = simulate_allreduce(cluster, 4 * p * 64, "torus2d", torus_x=x)
    assert row["steps"] == 2 * (x - 1) + 2 * (full_rows - 1) + (2 if t else 0)
    if t:
        even = Cluster.for_ranks(full_rows * x, x, **WHOLE)
        assert row["seconds"] > simulate_allreduce(even, 4 * p * 64, "torus2d",
                                                   torus_x=x)["seconds"]


def test_auto_follows_fusecomms_selector():
    """auto runs what ChooseByCost would: the candidate of least selector time."""
    slow_net = Cluster(4, 4, beta_intra=1e-11, beta_inter=2e-9, alpha_inter=2e-5)
    for n in (1 << 10, 1 << 16, 1 << 22, 1 << 26):
        row = simulate_allreduce(slow_net, n, "auto")
        times = {a: selector_seconds(a, slow_net, n) for a in auto_candidates(slow_net)}
        assert row["picked"] == min(times, key=times.get)
    # Large buffers across a slow network go to a two-level scheme, as in docs/algorithms.md.
    assert auto_choice(slow_net, 64 << 20) in ("hierarchical_scatter", "torus2d")


def test_calibration_file_round_trip(tmp_path):
    cluster = Cluster(3, 4, alpha_intra=1e-6, beta_intra=2e-11, alpha_inter=9e-6,
                      beta_inter=3e-10, gamma=2e-12)
    path = tmp_path / "calibration.txt"
    path.write_text(cluster.to_calibration())
    back = Cluster.from_calibration(path.read_text(), 3, 4)
    for name in ("alpha_intra", "beta_intra", "alpha_inter", "beta_inter", "gamma"):
        assert getattr(back, name) == pytest.approx(getattr(cluster, name), rel=1e-5), name
    assert back.to_calibration() == path.read_text()
    n = 8 << 20
    assert simulate_allreduce(back, n, "torus2d")["seconds"] == pytest.approx(
        simulate_allreduce(cluster, n, "torus2d")["seconds"], rel=1e-5)
    with pytest.raises(ValueError, match="lacks"):
        Cluster.from_calibration("alpha_intra 1e-6\n", 2, 2)


def _cli(*args):
    return subprocess.run([sys.executable, "-P", "-m", "fusecomm.runner.cli", "simulate", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_json_lines():
    out = _cli("--ranks", "2176", "--torus-x", "32", "--algorithms", "ring,torus2d", "--size",
               "100M", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["algorithm"], r["ranks"], r["steps"]) for r in rows] == [
        ("ring", 2176, 4350), ("torus2d", 2176, 196)]
    for r in rows:
        assert r["seconds"] > 0 and r["size"] == 100 << 20 and r["bytes_per_link"] > 0


def test_cli_calibration_table_plot_and_errors(tmp_path):
    calibration = tmp_path / "cal.txt"
    calibration.write_text(Cluster(2, 2, beta_inter=8e-9).to_calibration())
    plot = tmp_path / "sweep.png"
    out = _cli("--calibration", str(calibration), "--gpus-per-node", "2", "--ranks", "4:16",
               "--size", "1M", "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    assert "hierarchical_scatter" in out.stdout and plot.stat().st_size > 1000
    bad = _cli("--algorithms", "ring,bogus", "--size", "1M")
    assert bad.returncode == 2 and "unknown algorithm 'bogus'" in bad.stderr


def test_resnet50_gradients_from_the_architecture():
    grads = resnet50_gradients(backward_s=0.1)
    assert len(grads) == 161
    assert sum(g.elems for g in grads) == 25_557_032
    assert grads[0].name == "fc.bias" and grads[-1].name == "conv1.weight"
    assert sum(g.compute_s for g in grads) == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(6))
def test_mgwfbp_never_worse_than_layerwise_or_threshold(seed):
    """On ResNet-50 over clusters from start-up-bound to bandwidth-bound, MG-WFBP's exposed
    communication is at most the better of layer-wise and threshold fusion's."""
    rng = np.random.default_rng(seed)
    cluster = Cluster.for_ranks(int(rng.choice([8, 16, 64, 256])), 8,
                                alpha_intra=float(10 ** rng.uniform(-6, -4.5)),
                                beta_intra=1e-11, alpha_inter=float(10 ** rng.uniform(-6, -3.5)),
                                beta_inter=float(10 ** rng.uniform(-10.5, -8.5)))
    grads = resnet50_gradients(backward_s=float(rng.uniform(0.02, 0.3)))
    for fp16 in (False, True):
        rows = {r["plan"]: r for r in simulate_training_step(cluster, grads, "ring",
                                                             fp16=fp16)}
        best_other = min(rows["layerwise"]["exposed_s"], rows["threshold"]["exposed_s"])
        assert rows["mgwfbp"]["exposed_s"] <= best_other * (1 + 1e-9) + 1e-12, (
            f"seed {seed}, {cluster.describe()}, fp16={fp16}: {rows}")


def test_fp16_halves_the_bytes():
    cluster = Cluster(4, 8, beta_inter=1e-9)
    grads = resnet50_gradients()
    fp32 = {r["plan"]: r for r in simulate_training_step(cluster, grads, "ring")}
    fp16 = {r["plan"]: r for r in simulate_training_step(cluster, grads, "ring", fp16=True)}
    assert fp16["layerwise"]["comm_s"] < 0.6 * fp32["layerwise"]["comm_s"] + 161 * 62 * 5e-6


def test_plans_on_a_hand_made_case():
    """Two gradients ready at 1 and 2 s, all-reduce 0.5 s + 1 s/B start-up bound: layer-wise
    exposes 0.5 s + its second message; merging them saves one start-up."""
    from fusecomm.simulate.workloads import Gradient
    grads = [Gradient("a", 1, 1.0), Gradient("b", 1, 0.1)]
    rows = {r.plan: r for r in evaluate_plans(grads, lambda m: 0.5 + 1e-3 * m, 4,
                                              threshold=1 << 20, cycle_s=0)}
    assert rows["layerwise"].buckets == 2
    assert rows["layerwise"].exposed_s == pytest.approx(1.0 + 0.504 + 0.504 - 1.1)
    assert rows["mgwfbp"].buckets == 1
    assert rows["mgwfbp"].exposed_s == pytest.approx(0.5 + 0.008)


def test_size_sweeps():
    assert parse_sizes("64K:256K") == [64 << 10, 128 << 10, 256 << 10]
    assert parse_sizes("1M,100") == [1 << 20, 100]
    with pytest.raises(ValueError):
        parse_sizes("lots")


def _fresh_runs():
    import glob
    import os
    here = os.path.join(os.path.dirname(__file__), "..", "docs", "simulate_testbed")
    for cal in sorted(glob.glob(os.path.join(here, "cal_*.txt"))):
        shape, link = os.path.basename(cal)[4:-4].split("_")
        rows = os.path.join(here, f"testbed_{shape}_{link}.jsonl")
        # A run that ended before writing its JSON keeps only the printed times (no
        # predictions): nothing to check here.
        if os.path.exists(rows) and "predicted_us" in open(rows).read():
            yield shape, cal, rows


@pytest.mark.parametrize("shape,cal,rows", list(_fresh_runs()) or [pytest.param(
    None, None, None, marks=pytest.mark.skip(reason="no docs/simulate_testbed runs"))])
def test_selector_reproduces_fusecomms_own_predictions(shape, cal, rows):
    """On a testbed run, fusecomm wrote its calibration (FUSECOMM_CALIBRATION_FILE) and, beside
    every measurement, the time its cost model predicted: closed_form's port of the selector,
    fed that file, gives the same numbers (to the file's 6 digits)."""
    nodes, k = (int(v) for v in shape.split("x"))
    with open(cal) as f:
        cluster = Cluster.from_calibration(f.read(), nodes, k)
    checked = 0
    with open(rows) as f:
        for line in f:
            r = json.loads(line)
            algorithm = r["impl"].split(":")[-1]
            if r["impl"].startswith("fusecomm:") and algorithm in (
                    "ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d"):
                assert selector_seconds(algorithm, cluster, r["size"]) * 1e6 == pytest.approx(
                    r["predicted_us"], rel=2e-5), (algorithm, r["size"])
                checked += 1
    assert checked >= 10


def test_one_flow_slower_than_the_nic():
    """A single flow capped below the NIC's rate (a calibration whose global ring is slower than
    its cross-node rings per NIC) slows the ring, which crosses with one flow per node, but not
    hierarchical_scatter's k flows per NIC, which fill the NIC anyway."""
    base = dict(nodes=2, gpus_per_node=4, beta_intra=1e-11, beta_inter=1e-9, **WHOLE)
    capped = Cluster(**base, beta_flow=2e-9)
    n = 16 << 20
    assert simulate_allreduce(capped, n, "ring")["seconds"] > 1.9 * simulate_allreduce(
        Cluster(**base), n, "ring")["seconds"]
    assert simulate_allreduce(capped, n, "hierarchical_scatter")["seconds"] == pytest.approx(
        simulate_allreduce(Cluster(**base), n, "hierarchical_scatter")["seconds"])


def test_uneven_nodes():
    """10 GPUs on nodes of 4, 4, 2: hierarchical trees each node as it is (⌈lg 4⌉ rounds each
    way), hierarchical_scatter falls back to the ring over all ranks, as fusecomm does."""
    cluster = Cluster.for_ranks(10, 4)
    assert cluster.node_sizes == [4, 4, 2] and not cluster.homogeneous
    n = 4 << 20
    assert simulate_allreduce(cluster, n, "hierarchical")["steps"] == 2 * 2 + 2 * (3 - 1)
    hs = simulate_allreduce(cluster, n, "hierarchical_scatter")
    ring = simulate_allreduce(cluster, n, "ring")
    assert (hs["steps"], hs["seconds"]) == (ring["steps"], ring["seconds"]) == (18, ring["seconds"])
    assert "hierarchical_scatter" not in (auto_choice(cluster, s) for s in (1 << 10, 1 << 26))


# ---- the CPU: ranks sharing cores, reduction and copy cost, per-call overhead ----------------

@pytest.mark.parametrize("cores", [None, 4, 16])
@pytest.mark.parametrize("algorithm", ["hierarchical", "hierarchical_scatter", "torus2d"])
def test_closed_forms_hold_with_a_core_per_rank(cores, algorithm):
    """As many cores as ranks (or unlimited) is the CPU-less model, copy cost below the links'."""
    cluster = Cluster(4, 4, alpha_intra=2e-6, beta_intra=1e-10, alpha_inter=2e-5,
                      beta_inter=8e-10, gamma=5e-11, cores_per_node=cores,
                      copy_beta_intra=1e-10, copy_beta_inter=1e-10, **WHOLE)
    n = 4 * 16 * 512
    got = simulate_allreduce(cluster, n, algorithm)["seconds"]
    assert got == pytest.approx(closed_form_seconds(algorithm, cluster, n), rel=1e-9)


@pytest.mark.parametrize("p,cores", [(4, 2), (8, 2), (8, 1), (6, 4), (3, 0.5)])
def test_ranks_sharing_cores_slow_copies_and_reductions(p, cores):
    """Shared memory moves data with the CPU (copy_beta_intra = β): with p ranks on c < p cores
    every copy and reduction takes p/c times longer: the ring's closed form with β and γ scaled.
    """
    s = p / cores
    links = dict(alpha_intra=3e-6, beta_intra=4e-10, gamma=1e-10, **WHOLE)
    shared = Cluster(1, p, cores_per_node=cores, copy_beta_intra=4e-10, **links)
    n = 4 * p * 1000
    want = closed_form_seconds("ring", Cluster(1, p, **dict(links, beta_intra=4e-10 * s,
                                                               gamma=1e-10 * s)), n)
    got = simulate_allreduce(shared, n, "ring")["seconds"]
    assert got == pytest.approx(want, rel=1e-9)
    alone = simulate_allreduce(Cluster(1, p, copy_beta_intra=4e-10, **links), n, "ring")["seconds"]
    latency = 2 * (p - 1) * 3e-6
    assert got - latency == pytest.approx(s * (alone - latency), rel=1e-9)


def test_cpu_bound_transfer_across_nodes():
    """A cross-node flow goes at the slower of the NIC and the CPUs driving its ends: 2 nodes of
    2 ranks on one 2-core machine (0.5 core per node: slowdown 4) with copy cost 1e-9 s/B drive
    4e-9 s/B, slower than the NIC's 1e-9 s/B; with a core per rank the NIC bounds it."""
    links = dict(alpha_inter=1e-5, beta_inter=1e-9, beta_intra=1e-11, copy_beta_inter=1e-9,
                 gamma=0.0,
                 **WHOLE)
    n = 4 << 20
    fast = simulate_allreduce(Cluster(2, 2, **links), n, "ring")["seconds"]
    slow = simulate_allreduce(Cluster(2, 2, cores_per_node=0.5, **links), n, "ring")["seconds"]
    # ring over 4 ranks, 6 rounds of n/4: two crossing flows per round, each alone on its
    # node's NIC out and in: one flow's β = max(NIC, CPU).
    assert fast == pytest.approx(6 * (1e-5 + n / 4 * 1e-9), rel=1e-9)
    assert slow == pytest.approx(6 * (1e-5 + n / 4 * 4e-9), rel=1e-9)


def test_a_busy_core_serialises_reductions():
    """Segments arrive faster than one core can reduce them: the reductions queue on the core
    (time = the first segment's transfer + every byte's reduction), where a free core per
    segment would overlap them with the transfer."""
    seg = 512 << 10
    n = 32 * seg
    cluster = Cluster(1, 2, alpha_intra=0.0, beta_intra=1e-11, gamma=1e-9, segment_bytes=seg)
    got = simulate_allreduce(cluster, n, "ring")["seconds"]
    # ring of 2: reduce-scatter of n/2 (16 segments reduced), then all-gather of n/2.
    reduce_scatter = seg * 1e-11 + n / 2 * 1e-9
    assert reduce_scatter < got < reduce_scatter + n / 2 * 1e-11 + 1e-9
    shared = dataclasses.replace(cluster, cores_per_node=1)
    assert simulate_allreduce(shared, n, "ring")["seconds"] == pytest.approx(
        2 * seg * 1e-11 + n / 2 * 2e-9 + (got - reduce_scatter - seg * 1e-11), rel=1e-6)


def test_call_overhead_is_cpu_work_too():
    links = dict(alpha_intra=1e-6, beta_intra=1e-10, gamma=0.0, **WHOLE)
    n = 4 * 4 * 1000
    base = simulate_allreduce(Cluster(1, 4, **links), n, "ring")["seconds"]
    for cores, s in ((None, 1), (4, 1), (2, 2), (1, 4)):
        c = Cluster(1, 4, call_overhead=1e-3, cores_per_node=cores, **links)
        assert simulate_allreduce(c, n, "ring")["seconds"] == pytest.approx(
            base + 1e-3 * s, rel=1e-9), cores


def test_cpu_options_checked_and_kept_by_the_cli(tmp_path):
    with pytest.raises(ValueError, match="cores_per_node must be > 0"):
        Cluster(2, 2, cores_per_node=0)
    with pytest.raises(ValueError, match="copy_beta_inter must be >= 0"):
        Cluster(2, 2, copy_beta_inter=-1.0)
    import argparse
    import os

    from fusecomm.simulate.cli import add_arguments, build_cluster
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    calibration = tmp_path / "cal.txt"
    calibration.write_text(Cluster(2, 2, beta_inter=8e-9).to_calibration())
    measured_here = build_cluster(parser.parse_args(["--calibration", str(calibration)]), 4)
    assert measured_here.cores_per_node == os.cpu_count()
    assert build_cluster(parser.parse_args([]), 4).cores_per_node is None
    args = parser.parse_args(["--cores-per-node", "0.5", "--copy-beta-inter", "1e-9",
                              "--call-overhead", "1e-3", "--gamma", "2e-10"])
    cluster = build_cluster(args, 8)
    assert (cluster.cores_per_node, cluster.copy_beta_inter, cluster.call_overhead,
            cluster.gamma) == (0.5, 1e-9, 1e-3, 2e-10)
    assert list(cluster.cpu_slowdown()) == [16.0] * 8  # 8 ranks per node of 0.5 core
