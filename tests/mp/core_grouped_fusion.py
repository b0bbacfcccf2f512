"""A grouped all-reduce is negotiated and fused as one (Horovod's grouped operations): 200
tensors take a few milliseconds to submit, several engine cycles, yet every step's timeline
shows all 200 in one fused all-reduce. Results are checked on every rank. Arguments: the
timeline path, seed."""
import json
import sys

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_collectives import check_equal

MEMBERS, STEPS = 200, 4


def main():
    path, seed = sys.argv[1], int(sys.argv[2])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in rng.integers(0, 300, MEMBERS)]  # zeros and odd sizes included
    hvd.start_timeline(path)
    for step in range(STEPS):
        inputs = [rank_data(seed + step * MEMBERS + i, rank, (c,), "float32")
                  for i, c in enumerate(counts)]
        results = hvd.grouped_allreduce(inputs, op=hvd.Sum, name=f"group{step}")
        for i, (c, got) in enumerate(zip(counts, results)):
            ref = sum(rank_data(seed + step * MEMBERS + i, q, (c,), "float32") for q in range(n))
            check_equal(got, ref, "float32", f"step {step} member {i}")
    hvd.stop_timeline()
    hvd.barrier()
    if rank == 0:
        events = json.load(open(path))
        fused = [e["args"]["tensors"] for e in events if e.get("name") == "ALLREDUCE"]
        nonempty = sum(1 for c in counts if c > 0)
        # One row per member with data; each says how many tensors its all-reduce carried.
        assert len(fused) >= STEPS * nonempty // 2, (len(fused), nonempty)
        assert set(fused) <= {nonempty, MEMBERS}, sorted(set(fused))
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
