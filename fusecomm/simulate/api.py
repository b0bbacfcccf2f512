"""Python API of `fusecomm simulate`: one all-reduce, sweeps, and a training step's fusion plans."""
import functools

import numpy as np

from fusecomm.simulate.closed_form import auto_choice, selector_seconds
from fusecomm.simulate.events import simulate_schedule
from fusecomm.simulate.plans import evaluate_plans
from fusecomm.simulate.schedules import ALGORITHMS


def _torus_x(cluster, torus_x):
    return torus_x or min(cluster.gpus_per_node, cluster.ranks)


def simulate_allreduce(cluster, nbytes, algorithm="auto", torus_x=None, elem_size=4,
                       timeline=False):
    """Predicted cost of one all-reduce of `nbytes` on `cluster`.

    algorithm: one of ALGORITHMS or "auto" (what fusecomm's selector would choose from the
    cluster's calibration). Returns a dict: algorithm, picked, ranks, nodes, gpus_per_node,
    torus_x, size, steps, seconds, bytes_per_rank, bytes_per_link, messages, selector_seconds
    (fusecomm's own closed-form prediction), and with timeline=True the per-round timeline.
    """
    x = _torus_x(cluster, torus_x)
    picked = auto_choice(cluster, nbytes, x) if algorithm == "auto" else algorithm
    if picked not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                         f"{', '.join(ALGORITHMS + ('auto',))}")
    result = simulate_schedule(picked, cluster, nbytes, elem_size, x, keep_timeline=timeline)
    row = {"algorithm": algorithm, "picked": picked, "ranks": cluster.ranks,
           "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node, "torus_x": x,
           "torus_y": -(-cluster.ranks // x), "size": int(nbytes), "steps": result.steps,
           "seconds": result.seconds, "bytes_per_rank": result.bytes_per_rank,
           "bytes_per_link": result.bytes_per_link, "messages": result.messages,
           "selector_seconds": selector_seconds(picked, cluster, nbytes, x)}
    if timeline:
        row["timeline"] = result.timeline
    return row


def sweep(cluster, sizes, algorithms=ALGORITHMS + ("auto",), ranks=None, torus_x=None,
          elem_size=4):
    """simulate_allreduce for every size x algorithm (x ranks, the links kept, when given)."""
    rows = []
    for p in ranks or [cluster.ranks]:
        c = cluster if p == cluster.ranks else cluster.with_ranks(p)
        for size in sizes:
            for algorithm in algorithms:
                rows.append(simulate_allreduce(c, size, algorithm, torus_x, elem_size))
    return rows


def allreduce_time_function(cluster, algorithm, torus_x=None, max_bytes=1 << 30):
    """Seconds of an all-reduce of any size: the event model at powers of two, linear in
    between (an α-β schedule is affine in the size between such points)."""
    grid = [4 << i for i in range(max(1, int(np.ceil(np.log2(max_bytes / 4)))) + 1)]
    times = [simulate_allreduce(cluster, s, algorithm, torus_x)["seconds"] for s in grid]

    @functools.lru_cache(maxsize=None)
    def seconds(nbytes):
        return float(np.interp(nbytes, grid, times))
    return seconds


def simulate_training_step(cluster, gradients, algorithm="auto", torus_x=None, fp16=False,
                           plans=("layerwise", "threshold", "mgwfbp"), threshold=64 << 20,
                           cycle_s=1e-3):
    """Communication exposed after backward for each fusion plan: a list of dicts with plan,
    buckets, comm_s, exposed_s, backward_s, step_s. fp16: gradients travel as half precision
    (half the bytes; the casts are not costed)."""
    elem = 2 if fp16 else 4
    total = sum(g.elems for g in gradients) * elem
    seconds = allreduce_time_function(cluster, algorithm, torus_x, max_bytes=max(total, 8))
    rows = []
    for r in evaluate_plans(gradients, seconds, elem, plans, threshold, cycle_s):
        rows.append({"plan": r.plan, "algorithm": algorithm, "ranks": cluster.ranks,
                     "fp16": fp16, "buckets": r.buckets, "comm_s": r.comm_s,
                     "exposed_s": r.exposed_s, "backward_s": r.backward_s, "step_s": r.step_s})
    return rows
