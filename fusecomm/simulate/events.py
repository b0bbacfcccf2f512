"""The discrete-event model: when each segment of each message of a schedule moves.

Every message is cut into segments of at most cluster.segment_bytes (one segment when 0), as
fusecomm's algorithms cut theirs. Segment j of a message in round r starts when
- the sender holds that data: its own segment j after its previous round (received, reduced or
  just kept), mapped proportionally when the two rounds cut their messages differently;
- the receiver has got as far (the transfer is a rendezvous: the receiver posted its receive);
- the sender's port has sent segment j-1 and the receiver's port has taken it in.
It occupies the ports for bytes·β (β of the link it crosses: the rank's own intra-node port, or
the node's NIC shared by every flow leaving, or entering, the node in that round, no faster than
one flow alone goes) — or longer, bytes·copy_beta·slowdown (intra or inter), when the CPU of
either end (shared by more ranks than cores: `Cluster.cpu_slowdown`) cannot drive it faster —
and arrives α later. A reducing receiver then spends bytes·γ·slowdown on it on its core, once
the core has finished reducing the previous segment. Every rank starts after
`call_overhead`·slowdown of software. So segments of consecutive rounds pipeline (a ring
forwards a segment while the next is still arriving), flows on one NIC slow each other, and
uneven schedules (folded ranks, partial grids) wait where the real ones wait.

With one segment per message, no contention and unlimited cores (or ranks <= cores, no copy
cost, no overhead) a symmetric schedule takes exactly
Σ over rounds of (α + bytes·β (+ bytes·γ when reducing)): the closed forms of
shared/REFERENCE.md, which tests/test_simulate.py holds the model to.
"""
import dataclasses
import math

import numpy as np

from fusecomm.simulate.schedules import rounds_for

MAX_SEGMENTS = 256  # per message; beyond it segments grow (the pipeline is long enough)


@dataclasses.dataclass
class EventResult:
    seconds: float
    steps: int  # rounds the busiest rank takes part in
    bytes_per_rank: float  # bytes the busiest rank sends
    bytes_per_link: float  # bytes the busiest NIC sends (0 on one node)
    messages: int  # segment messages put on the wire, all ranks
    timeline: list  # (phase, first start, last arrival) per round


def _segments(cluster, largest):
    if not cluster.segment_bytes or largest <= cluster.segment_bytes:
        return 1
    return min(MAX_SEGMENTS, math.ceil(largest / cluster.segment_bytes))


def _covering(j, held, g):
    """Index of the held segment (of `held` per rank) covering the end of segment j of g."""
    return ((j + 1) * held + g - 1) // g - 1


def simulate_rounds(rounds, cluster, keep_timeline=False):
    p = cluster.ranks
    node = np.arange(p) // cluster.gpus_per_node
    slowdown = cluster.cpu_slowdown()
    # per rank: time each segment of its data is ready (after the call's software overhead)
    ready = np.full((p, 1), cluster.call_overhead) * slowdown[:, None]
    cpu_free = ready[:, 0].copy()  # when each rank's core has finished its last reduction
    resolution = np.ones(p, dtype=np.int64)  # segments of each rank's last round
    tx_free, rx_free = np.zeros(p), np.zeros(p)
    steps, sent = np.zeros(p, dtype=np.int64), np.zeros(p)
    nic_sent = np.zeros(cluster.nodes)
    messages, timeline = 0, []
    for rnd in rounds:
        src, dst, nbytes = rnd.src, rnd.dst, rnd.nbytes
        if src.size == 0:
            continue
        g = _segments(cluster, float(nbytes.max()))
        if g > ready.shape[1]:
            ready = np.pad(ready, ((0, 0), (0, g - ready.shape[1])))
        crossing = node[src] != node[dst]
        share = np.ones(src.size)
        if crossing.any() and cluster.nic_contention:
            out_flows = np.bincount(node[src[crossing]], minlength=cluster.nodes)
            in_flows = np.bincount(node[dst[crossing]], minlength=cluster.nodes)
            share[crossing] = np.maximum(out_flows[node[src[crossing]]],
                                         in_flows[node[dst[crossing]]])
        # Across nodes: the NIC's rate shared by its flows, but never faster than one flow
        # alone can go; one flow alone pays its own latency, several the loaded NIC's.
        alpha_one, beta_one = cluster.single_flow
        beta = np.where(crossing, np.maximum(cluster.beta_inter * share, beta_one),
                        cluster.beta_intra)
        alpha = np.where(crossing, np.where(share > 1, cluster.alpha_inter, alpha_one),
                         cluster.alpha_intra)
        piece = nbytes / g
        # The slower of the link and the CPUs that drive the two ends.
        cpu_beta = (np.where(crossing, cluster.copy_beta_inter, cluster.copy_beta_intra)
                    * np.maximum(slowdown[src], slowdown[dst]))
        occupy = piece * np.maximum(beta, cpu_beta)
        reduce_time = piece * cluster.gamma * slowdown[dst] if rnd.reduce else 0.0
        new_src = np.empty((src.size, g))
        new_dst = np.empty((dst.size, g))
        first_start = math.inf
        for j in range(g):
            # The segment of each rank's held data that covers this segment's end.
            src_ready = ready[src, _covering(j, resolution[src], g)]
            dst_ready = ready[dst, _covering(j, resolution[dst], g)]
            start = np.maximum(np.maximum(src_ready, dst_ready),
                               np.maximum(tx_free[src], rx_free[dst]))
            end = start + occupy
            tx_free[src] = end
            rx_free[dst] = end
            new_src[:, j] = np.maximum(src_ready, end)
            # A rank receives at most one message per round: dst has no repeats.
            arrived = end + alpha
            if rnd.reduce:
                arrived = np.maximum(arrived, cpu_free[dst]) + reduce_time
                cpu_free[dst] = arrived
            new_dst[:, j] = np.maximum(dst_ready, arrived)
            if j == 0:
                first_start = float(start.min())
        # A rank that both sends and receives holds its data when both are done.
        updated = np.zeros((p, g))
        np.maximum.at(updated, src, new_src)
        np.maximum.at(updated, dst, new_dst)
        part = np.zeros(p, dtype=bool)
        part[src] = True
        part[dst] = True
        ready[part, :g] = updated[part]
        resolution[part] = g
        steps += part
        np.add.at(sent, src, nbytes)
        if crossing.any():
            np.add.at(nic_sent, node[src[crossing]], nbytes[crossing])
        messages += src.size * g
        if keep_timeline:
            timeline.append((rnd.phase, first_start, float(new_dst.max())))
    done = np.where(np.arange(ready.shape[1])[None, :] < resolution[:, None], ready, 0.0)
    return EventResult(seconds=float(done.max()) if p else 0.0, steps=int(steps.max(initial=0)),
                       bytes_per_rank=float(sent.max(initial=0)),
                       bytes_per_link=float(nic_sent.max(initial=0)), messages=messages,
                       timeline=timeline)


def simulate_schedule(algorithm, cluster, nbytes, elem_size=4, torus_x=None,
                      keep_timeline=False):
    """Event-model result of one all-reduce of `nbytes` (elements of `elem_size` bytes)."""
    elems = int(nbytes) // elem_size
    rounds = rounds_for(algorithm, cluster, elems, elem_size, torus_x)
    return simulate_rounds(rounds, cluster, keep_timeline)
