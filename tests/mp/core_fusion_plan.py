"""Fusion plans (FUSECOMM_FUSION_PLAN) on a simulated training step: 12 gradients submitted
as backward makes them ready, with compute between them (a burst of four large ones submitted
as one group, small ones 1 ms apart, and one 60 ms gap), all-reduced and checked against the NumPy
sum on every step. The wrapper runs it on the cost model's defaults (no calibration), so the
plan does not depend on what a loaded machine measures. With mgwfbp the engine learns the step
and plans buckets: the plan must be the same on every rank, cover every gradient once, merge
the burst and never wait across the 60 ms gap.
In 'drift' the compute times change after a few steps, and the engine must re-plan. In
'reversed', odd ranks submit the gradients after the burst in the opposite order (the plan
must still agree and nothing may hang). Arguments: plan, mode (plain, drift, reversed), seed."""
import json
import sys
import time

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_collectives import check_equal

BURST = 1 << 18
# (elements, seconds of compute before the gradient is ready), in backward order.
LAYERS = [(BURST, 0.0), (BURST, 0.0), (BURST, 0.0), (BURST, 0.0),  # a burst of 1 MiB each
          (300, 0.001), (1000, 0.001), (7, 0.001), (4099, 0.001),
          (13, 0.06),  # the gap: its bucket cannot hold gradient 7
          (2000, 0.0), (31, 0.0005), (65537, 0.0005)]
GAP = 8
STEPS = 30
DRIFT_FROM, DRIFT_SLEEP = 6, 0.025  # 'drift': extra compute before gradients 4..7


def plan_codes(state):
    """Each gradient's bucket index, in gradient order (-1: in no bucket)."""
    where = {name: b for b, bucket in enumerate(state["buckets"]) for name in bucket}
    return np.array([where.get(layer_name(i), -1) for i in range(len(LAYERS))], np.int64)


def layer_name(i):
    return f"burst.{i}" if i < 4 else f"grad.{i}"


def main():
    plan, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hvd.init(fusion_plan=plan)
    rank, n = hvd.rank(), hvd.size()
    order = list(range(4, len(LAYERS)))  # after the burst
    if mode == "reversed" and rank % 2 == 1:
        order.reverse()
    for step in range(STEPS):
        grads = [rank_data(seed + 100 * step + i, rank, (c,), "float32")
                 for i, (c, _) in enumerate(LAYERS)]
        handles = dict(enumerate(hvd.grouped_allreduce_async(grads[:4], op=hvd.Sum,
                                                             name="burst")))
        for i in order:
            compute = LAYERS[i][1]
            if mode == "drift" and step >= DRIFT_FROM and 4 <= i < 8:
                compute += DRIFT_SLEEP
            if compute:
                time.sleep(compute)
            handles[i] = hvd.allreduce_async(grads[i], op=hvd.Sum, name=layer_name(i))
        for i, (c, _) in enumerate(LAYERS):
            got = hvd.synchronize(handles[i])
            ref = sum(rank_data(seed + 100 * step + i, q, (c,), "float32") for q in range(n))
            check_equal(got, ref, "float32", f"seed {seed} plan {plan} step {step} gradient {i}")
    state = hvd._core.fusion_plan()
    assert state["kind"] == plan, state
    codes = plan_codes(state)
    everyone = hvd.allgather(codes[None, :], name="plan_codes")
    assert (everyone == codes[None, :]).all(), f"plans differ between ranks:\n{everyone}"
    if plan != "mgwfbp":
        assert state["plans_made"] == 0 and not state["buckets"], state
    else:
        assert state["steps_seen"] >= STEPS - 2, state
        assert state["plans_made"] >= 1, state
        assert (codes >= 0).all() and len(codes) == sum(len(b) for b in state["buckets"]), state
        # Buckets hold gradients in the (agreed) order they become ready.
        assert codes[GAP - 1] != codes[GAP], f"the plan waits 60 ms for a gradient: {state}"
        # The burst's members come microseconds apart, each all-reduce of 1 MiB takes far
        # longer: after the first (which may go alone, the link idle and the next gradient
        # further off than a start-up), the link is busy and merging is free.
        assert len(set(codes[:4].tolist())) <= 2, f"the burst is not merged: {state}"
        if mode == "drift":
            assert state["plans_made"] >= 2, f"no re-plan after the ready times moved: {state}"
    print(f"rank {rank}: plan {json.dumps(state['buckets'])} made {state['plans_made']} times",
          flush=True)
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
