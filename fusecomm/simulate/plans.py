"""Fusion plans for a training step: which gradients go into which all-reduce, and how much of
the communication is left exposed after backward ends.

- layer-wise (WFBP): every gradient is its own all-reduce, started as soon as it is ready (and
  the previous one is done).
- threshold: fusecomm's (and Horovod's) engine: every cycle (1 ms) it fuses the gradients that
  are ready, in order, up to the fusion threshold (64 MiB), and runs them.
- MG-WFBP (Shi, Chu & Li, INFOCOM 2019): with t_c(m) = a + b·m fitted to the all-reduce times,
  walk backward's order and merge the next gradient into the current bucket when it is ready
  before the bucket's all-reduce would finish and the wait is shorter than the start-up cost a
  that one all-reduce fewer saves (the wait counted from when the bucket could first have
  gone, see mgwfbp_buckets).

Every plan runs its buckets one at a time, in order (one communication stream), each starting
when its last gradient is ready and the previous bucket is done.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass
class PlanResult:
    plan: str
    buckets: int
    comm_s: float  # sum of the all-reduce times
    exposed_s: float  # communication still running after backward ends
    backward_s: float

    @property
    def step_s(self):
        return self.backward_s + self.exposed_s


def fit_startup(allreduce_seconds, sizes):
    """Least-squares a + b·m over `sizes` (bytes): MG-WFBP's start-up cost a and per-byte b."""
    sizes = np.asarray(sizes, dtype=float)
    times = np.array([allreduce_seconds(s) for s in sizes])
    b, a = np.polyfit(sizes, times, 1)
    return max(a, 0.0), max(b, 0.0)


def _run(buckets, ready, nbytes, allreduce_seconds, not_before=None):
    """End time and total communication time of running `buckets` (lists of gradient indices),
    bucket b not before not_before[b] (the engine cycle that launched it)."""
    end = comm = 0.0
    for b, bucket in enumerate(buckets):
        t = allreduce_seconds(sum(nbytes[i] for i in bucket))
        start = max(end, max(ready[i] for i in bucket), not_before[b] if not_before else 0.0)
        end = start + t
        comm += t
    return end, comm


def threshold_buckets(ready, nbytes, allreduce_seconds, threshold=64 << 20, cycle_s=1e-3):
    """fusecomm's engine loop: each cycle, fuse what is ready in order, up to `threshold` bytes
    per buffer; a buffer's all-reduce holds the loop until it is done. Returns the buckets and
    the time each was launched."""
    buckets, launched, i, now, n = [], [], 0, 0.0, len(ready)
    while i < n:
        if ready[i] > now:  # sleep to the first cycle at which the next gradient is ready
            now += np.ceil((ready[i] - now) / cycle_s) * cycle_s if cycle_s else ready[i] - now
        while i < n and ready[i] <= now:
            bucket, size = [i], nbytes[i]
            i += 1
            while i < n and ready[i] <= now and size + nbytes[i] <= threshold:
                size += nbytes[i]
                bucket.append(i)
                i += 1
            buckets.append(bucket)
            launched.append(now)
            now += allreduce_seconds(size)
        now += cycle_s
    return buckets, launched


def mgwfbp_buckets(ready, nbytes, allreduce_seconds, startup_s):
    buckets, end_prev = [], 0.0
    bucket, size = [0], nbytes[0]
    for j in range(1, len(ready)):
        # The bucket's all-reduce could have started when its first gradient was ready and the
        # stream free; every merge delays it, and all of them together may cost less than the
        # start-up they save. (Measured from the last merge instead, as the paper's recursion
        # reads, tiny layers chain into one bucket sent after backward: 20-40 ms exposed on
        # ResNet-50 at 512-2048 GPUs where threshold fusion exposes 1-9 ms.)
        could_start = max(ready[bucket[0]], end_prev)
        finish = max(ready[bucket[-1]], end_prev) + allreduce_seconds(size)
        if ready[j] < finish and ready[j] - could_start < startup_s:
            bucket.append(j)
            size += nbytes[j]
            continue
        buckets.append(bucket)
        end_prev = finish
        bucket, size = [j], nbytes[j]
    buckets.append(bucket)
    return buckets


def evaluate_plans(gradients, allreduce_seconds, elem_size=4, plans=("layerwise", "threshold",
                                                                     "mgwfbp"),
                   threshold=64 << 20, cycle_s=1e-3):
    """PlanResult per plan for `gradients` (workloads.Gradient, backward order) whose all-reduce
    of m bytes takes allreduce_seconds(m)."""
    ready = np.cumsum([g.compute_s for g in gradients]).tolist()
    nbytes = [g.elems * elem_size for g in gradients]
    backward_s = ready[-1]
    results = []
    for plan in plans:
        launched = None
        if plan == "layerwise":
            buckets = [[i] for i in range(len(ready))]
        elif plan == "threshold":
            buckets, launched = threshold_buckets(ready, nbytes, allreduce_seconds, threshold,
                                                  cycle_s)
        elif plan == "mgwfbp":
            sizes = np.geomspace(max(min(nbytes), 4), sum(nbytes), 12)
            startup_s, _ = fit_startup(allreduce_seconds, sizes)
            buckets = mgwfbp_buckets(ready, nbytes, allreduce_seconds, startup_s)
        else:
            raise ValueError(f"unknown plan {plan!r}; expected layerwise, threshold or mgwfbp")
        end, comm = _run(buckets, ready, nbytes, allreduce_seconds, launched)
        results.append(PlanResult(plan, len(buckets), comm, max(0.0, end - backward_s),
                                  backward_s))
    return results
