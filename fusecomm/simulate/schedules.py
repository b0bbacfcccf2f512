"""Each all-reduce algorithm's schedule as fusecomm runs it (csrc/collectives/*_allreduce.cc):
a sequence of rounds, each a set of point-to-point messages (src rank, dst rank, bytes, whether
the receiver reduces them). A rank sends at most one and receives at most one message per round;
the event model (events.py) decides when each message actually moves.

Rounds are generated lazily: a ring over 4096 ranks has 8190 of them.
"""
import dataclasses
import math

import numpy as np

ALGORITHMS = ("ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d")


@dataclasses.dataclass
class Round:
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray  # float64, bytes of each message
    reduce: bool
    phase: str


def even_blocks(total_elems, parts):
    """fusecomm's EvenBlockCounts: blocks differing by at most one element, the first
    total % parts of them one larger. `total_elems` may be an array (one split per group)."""
    total = np.asarray(total_elems, dtype=np.int64)
    base, extra = total // parts, total % parts
    index = np.arange(parts)
    return base[..., None] + (index < extra[..., None])


def ring_rounds(groups, blocks, elem, phase, reduce_scatter=True, allgather=True):
    """Ring reduce-scatter and/or all-gather on every row of `groups` (G x q ranks) at once,
    row g holding blocks[g] (G x q elements). Member i sends to member i+1."""
    groups = np.atleast_2d(groups)
    q = groups.shape[1]
    if q < 2:
        return
    blocks = np.broadcast_to(blocks, groups.shape) * float(elem)
    src, dst = groups.ravel(), np.roll(groups, -1, axis=1).ravel()
    member = np.arange(q)
    if reduce_scatter:
        for s in range(q - 1):
            yield Round(src, dst, blocks[:, (member - s) % q].ravel(), True,
                        f"{phase} reduce-scatter")
    if allgather:
        for s in range(q - 1):
            yield Round(src, dst, blocks[:, (member + 1 - s) % q].ravel(), False,
                        f"{phase} all-gather")


def ring_allreduce_rounds(groups, group_elems, elem, phase):
    """Ring all-reduce on every row of `groups`, row g reducing group_elems[g] elements."""
    groups = np.atleast_2d(groups)
    yield from ring_rounds(groups, even_blocks(group_elems, groups.shape[1]), elem, phase)


def ring(p, elems, elem):
    yield from ring_allreduce_rounds(np.arange(p), np.array([elems]), elem, "ring")


def rhd(p, elems, elem):
    """Rabenseifner: the first 2(p - p') ranks fold pairwise into the odd ones, recursive halving
    then doubling over the p' = 2^⌊lg p⌋ remaining ranks; the folded ranks get the result
    back."""
    if p < 2:
        return
    pp = 1 << (p.bit_length() - 1)
    extra = p - pp
    full = np.full(extra, float(elems * elem))
    if extra:
        yield Round(np.arange(0, 2 * extra, 2), np.arange(1, 2 * extra, 2), full, True, "rhd fold")
    active = np.concatenate([np.arange(1, 2 * extra, 2), np.arange(2 * extra, p)])
    vrank = np.arange(pp)
    held = np.full(pp, elems, dtype=np.int64)  # elements each virtual rank is responsible for
    history = []
    mask = pp // 2
    while mask:
        partner = vrank ^ mask
        lower = vrank < partner
        keep = np.where(lower, held // 2, held - held // 2)
        send = held - keep
        history.append((partner, send, keep))
        yield Round(active, active[partner], send * float(elem), True, "rhd halving")
        held = keep
        mask //= 2
    for partner, send, keep in reversed(history):
        yield Round(active, active[partner], keep * float(elem), False, "rhd doubling")
    if extra:
        yield Round(np.arange(1, 2 * extra, 2), np.arange(0, 2 * extra, 2), full, False,
                    "rhd unfold")


def _node_starts(node_sizes):
    return np.concatenate([[0], np.cumsum(node_sizes)[:-1]]).astype(np.int64)


def _binomial_rounds(node_sizes, nbytes, reduce):
    """Binomial reduce to (or broadcast from) local rank 0 of every node at once."""
    starts, sizes = _node_starts(node_sizes), np.asarray(node_sizes)
    depth = max(math.ceil(math.log2(k)) for k in node_sizes) if max(node_sizes) > 1 else 0
    dists = [1 << j for j in range(depth)]
    for d in (dists if reduce else reversed(dists)):
        src, dst = [], []
        for start, k in zip(starts, sizes):
            local = np.arange(d, k, 2 * d)  # senders in a reduce (receivers in a broadcast)
            src.append(start + local)
            dst.append(start + local - d)
        src, dst = np.concatenate(src), np.concatenate(dst)
        if not reduce:
            src, dst = dst, src
        yield Round(src, dst, np.full(src.size, float(nbytes)), reduce,
                    "intra tree reduce" if reduce else "intra tree broadcast")


def hierarchical(node_sizes, elems, elem):
    """Jia et al.: binomial reduce to the node leader, ring among the leaders, binomial
    broadcast."""
    yield from _binomial_rounds(node_sizes, elems * elem, True)
    yield from ring_allreduce_rounds(_node_starts(node_sizes), np.array([elems]), elem,
                                     "inter leaders")
    yield from _binomial_rounds(node_sizes, elems * elem, False)


def hierarchical_scatter(node_sizes, elems, elem):
    """Reduce-scatter inside every node, ring all-reduce of each shard across the nodes (all
    local ranks at once: k flows on each NIC), all-gather inside the node. Uneven nodes run the
    ring over all ranks, as fusecomm does."""
    p = int(sum(node_sizes))
    if len(set(node_sizes)) > 1:
        yield from ring(p, elems, elem)
        return
    k, m = node_sizes[0], len(node_sizes)
    grid = np.arange(p).reshape(m, k)
    shards = even_blocks(np.array([elems]), k)[0]
    yield from ring_rounds(grid, shards[None, :], elem, "intra", allgather=False)
    yield from ring_allreduce_rounds(grid.T, shards, elem, "inter shards")
    yield from ring_rounds(grid, shards[None, :], elem, "intra", reduce_scatter=False)


def torus2d(p, x, elems, elem):
    """Mikami et al.: rows of x consecutive ranks; reduce-scatter along the row, ring all-reduce of
    each shard along its column, all-gather along the row. A partial last row folds into the row
    above first and gets the result back last; x > p is a ring over all ranks."""
    if x < 1:
        raise ValueError(f"torus width must be >= 1, got {x}")
    full_rows = p // x
    if full_rows == 0:
        yield from ring(p, elems, elem)
        return
    partial = np.arange(full_rows * x, p)
    above = partial - x
    whole = np.full(partial.size, float(elems * elem))
    if partial.size:
        yield Round(partial, above, whole, True, "torus fold")
    grid = np.arange(full_rows * x).reshape(full_rows, x)
    shards = even_blocks(np.array([elems]), x)[0]
    yield from ring_rounds(grid, shards[None, :], elem, "torus rows", allgather=False)
    yield from ring_allreduce_rounds(grid.T, shards, elem, "torus columns")
    yield from ring_rounds(grid, shards[None, :], elem, "torus rows", reduce_scatter=False)
    if partial.size:
        yield Round(above, partial, whole, False, "torus unfold")


def rounds_for(algorithm, cluster, elems, elem, torus_x=None):
    """The rounds of `algorithm` on `cluster` for a buffer of `elems` elements of `elem` bytes."""
    p = cluster.ranks
    if p < 2 or elems == 0:
        return iter(())
    if algorithm == "ring":
        return ring(p, elems, elem)
    if algorithm == "rhd":
        return rhd(p, elems, elem)
    if algorithm == "hierarchical":
        return hierarchical(cluster.node_sizes, elems, elem)
    if algorithm == "hierarchical_scatter":
        return hierarchical_scatter(cluster.node_sizes, elems, elem)
    if algorithm == "torus2d":
        return torus2d(p, torus_x or min(cluster.gpus_per_node, p), elems, elem)
    raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                     f"{', '.join(ALGORITHMS + ('auto',))}")
