"""Closed-form α-β-γ costs (shared/REFERENCE.md) and fusecomm's `auto` selector.

- `closed_form_seconds`: the textbook formulas for an evenly divisible case, with the links the
  event model gives each phase (contention included: a phase whose flows share a NIC pays its β
  times the flows). They are the event model's test oracle where they apply: one segment per
  message, buffers that split evenly, power-of-two node sizes for the trees.
- `selector_seconds` / `auto_choice`: CostModel::Predict and ChooseByCost
  (csrc/collectives/cost_model.cc), i.e. what fusecomm's `auto` would choose on the cluster from
  its calibration, before its measured race among the close candidates.
"""
import math


def _ring(q, n, a, b, g):
    """Ring all-reduce of n bytes over q ranks: 2(q-1)(α + nβ/q) + (q-1)nγ/q."""
    return 2 * (q - 1) * (a + n / q * b) + (q - 1) * n / q * g if q > 1 else 0.0


def _rhd_pow2(q, n, a, b, g):
    return 2 * math.log2(q) * a + 2 * n * (q - 1) / q * b + n * (q - 1) / q * g


def closed_form_seconds(algorithm, cluster, nbytes, torus_x=None):
    """Textbook time of one all-reduce of `nbytes` on `cluster` (even cases only)."""
    p, k, m = cluster.ranks, cluster.gpus_per_node, cluster.nodes
    ai, bi, ax, bx, g = (cluster.alpha_intra, cluster.beta_intra, cluster.alpha_inter,
                         cluster.beta_inter, cluster.gamma)
    share = k if cluster.nic_contention else 1
    n = float(nbytes)
    if algorithm == "ring":
        if m > 1 and (ai, bi) != (ax, bx):
            raise ValueError("ring over mixed links has no closed form here")
        return _ring(p, n, ax if m > 1 else ai, bx if m > 1 else bi, g)
    if algorithm == "rhd":
        if m > 1:
            raise ValueError("rhd across nodes has no closed form here")
        return _rhd_pow2(p, n, ai, bi, g)
    if algorithm == "hierarchical":
        lg = math.ceil(math.log2(k)) if k > 1 else 0
        return lg * (ai + n * bi + n * g) + _ring(m, n, ax, bx, g) + lg * (ai + n * bi)
    if algorithm == "hierarchical_scatter":
        intra = 2 * (k - 1) * (ai + n / k * bi) + (k - 1) * n / k * g
        return intra + _ring(m, n / k, ax, bx * share, g)
    if algorithm == "torus2d":
        x = torus_x or k
        if x != k or p % x:
            raise ValueError("closed form only for rows = nodes")
        y = p // x
        return (2 * (x - 1) * (ai + n / x * bi) + (x - 1) * n / x * g
                + _ring(y, n / x, ax, bx * share, g))
    raise ValueError(f"unknown algorithm {algorithm!r}")


# ---- fusecomm's selector -------------------------------------------------------------------

def _ring_cost(q, n):
    """(steps, bytes sent) of the busiest rank of a ring all-reduce (RingAllreduceCost)."""
    return (2 * (q - 1), 2 * n * (q - 1) / q) if q > 1 else (0, 0.0)


def _heavier(a, b):
    """cost_model.cc's Busiest: the costlier of two ranks' (steps, bytes), by 1 µs + 1 ns/B."""
    return a if a[0] * 1e-6 + a[1] * 1e-9 >= b[0] * 1e-6 + b[1] * 1e-9 else b


def _busiest_cost(algorithm, cluster, n, x):
    """(steps, bytes) the selector charges: CostOf in cost_model.cc, which evaluates the cost
    functions of csrc/collectives/allreduce.h for the first and the last rank (or the first
    node's leader) and takes the costlier."""
    p, sizes = cluster.ranks, cluster.node_sizes
    k, m = sizes[0], len(sizes)
    lg = lambda q: math.ceil(math.log2(q)) if q > 1 else 0  # noqa: E731
    if algorithm == "ring":
        return _ring_cost(p, n)
    if algorithm == "rhd":
        pp = 1 << (p.bit_length() - 1)
        plain = (2 * lg(pp), 2 * n * (pp - 1) / pp)  # the last rank never folds
        return _heavier((2, n), plain) if p != pp else plain  # rank 0 folds out when p != pp
    if algorithm == "hierarchical":  # the leader: receives the tree, rings, sends the broadcast
        steps, sent = _ring_cost(m, n)
        return 2 * lg(k) + steps, n * lg(k) + sent
    if algorithm == "hierarchical_scatter":
        steps, sent = _ring_cost(m, n / k)
        return 2 * (k - 1) + steps, 2 * n * (k - 1) / k + sent
    if algorithm == "torus2d":
        rows, partial = divmod(p, x)
        steps, sent = _ring_cost(rows, n / x)
        first = (2 * (x - 1) + steps, 2 * n * (x - 1) / x + sent)
        if not partial:
            return first
        if rows == 1:  # rank 0 is in the last full row: it takes a fold
            first = (first[0] + 2, first[1] + n)
        return _heavier(first, (2, n))  # the last rank folds into the row above
    raise ValueError(f"unknown algorithm {algorithm!r}")


def selector_seconds(algorithm, cluster, nbytes, torus_x=None):
    """CostModel::Predict: the busiest rank's steps and bytes, priced by the link classes the
    calibration measured (intra, inter with every local flow at once, one global ring)."""
    model = cluster.selector_model()
    p, sizes = cluster.ranks, cluster.node_sizes
    x = torus_x or min(cluster.gpus_per_node, p)
    n = float(nbytes)
    global_ring = (algorithm == "ring"
                   or (algorithm == "hierarchical_scatter" and len(set(sizes)) > 1)
                   or (algorithm == "torus2d" and x > p))
    steps, sent = _busiest_cost("ring" if global_ring else algorithm, cluster, n, x)
    reduce_cost = 0.5 * sent * model.gamma
    if global_ring:
        return steps * model.alpha_ring + sent * model.beta_ring + reduce_cost
    if len(sizes) <= 1:
        return steps * model.alpha_intra + sent * model.beta_intra + reduce_cost
    inter = None
    if algorithm == "hierarchical":
        inter = _ring_cost(len(sizes), n)
    elif algorithm == "hierarchical_scatter":
        inter = _ring_cost(len(sizes), math.ceil(n / sizes[0]))
    elif algorithm == "torus2d" and all(s % x == 0 for s in sizes):
        inter = _ring_cost(p // x, math.ceil(n / x))
    if inter is None:  # rhd, or torus rows that cross nodes: all of it at inter prices
        return steps * model.alpha_inter + sent * model.beta_inter + reduce_cost
    intra = (max(0, steps - inter[0]), max(0.0, sent - inter[1]))
    return (intra[0] * model.alpha_intra + intra[1] * model.beta_intra
            + inter[0] * model.alpha_inter + inter[1] * model.beta_inter + reduce_cost)


def auto_candidates(cluster):
    """AutoCandidates, less `mpi` (the transport's own MPI_Allreduce, which a simulated cluster
    has no schedule for)."""
    candidates = ["ring", "rhd", "torus2d"]
    if cluster.nodes > 1:
        candidates.append("hierarchical")
        if cluster.homogeneous:
            candidates.append("hierarchical_scatter")
    return candidates


def auto_choice(cluster, nbytes, torus_x=None):
    """ChooseByCost: the candidate the selector predicts fastest (first one on ties)."""
    best = None
    for algorithm in auto_candidates(cluster):
        t = selector_seconds(algorithm, cluster, nbytes, torus_x)
        if best is None or t < best[1]:
            best = (algorithm, t)
    return best[0]

