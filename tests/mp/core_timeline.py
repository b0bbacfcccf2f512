"""A timeline written during fused all-reduces and other collectives parses as a Chrome trace
with the activities fusecomm promises. Argument: the timeline path."""
import json
import sys

import numpy as np

import fusecomm as hvd
from _util import run_main


def main():
    path = sys.argv[1]
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    hvd.start_timeline(path, mark_cycles=True)
    for step in range(5):
        handles = [hvd.allreduce_async(np.ones(100 * (i + 1), np.float32), name=f"grad.{i}")
                   for i in range(6)]
        for h in handles:
            hvd.synchronize(h)
    hvd.allgather(np.ones((2, 2)), name="gathered")
    hvd.broadcast(np.ones(3), 0, name="weights")
    hvd.stop_timeline()
    hvd.barrier()
    if rank == 0:
        with open(path) as f:
            events = json.load(f)
        names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
        assert {"grad.0", "grad.5", "gathered", "weights"} <= names, names
        activities = {e.get("name") for e in events if e.get("ph") == "B"}
        for expected in ["NEGOTIATE_allreduce", "QUEUE", "ALLREDUCE", "MEMCPY_IN_FUSION_BUFFER",
                         "MEMCPY_OUT_FUSION_BUFFER", "ALLGATHER", "BROADCAST"]:
            assert expected in activities, (expected, activities)
        collectives = [e for e in events if e.get("name") == "ALLREDUCE"]
        assert all("algorithm" in e["args"] and e["args"]["bytes"] > 0 for e in collectives)
        fused = [e for e in collectives if e["args"]["tensors"] > 1]
        assert fused, "no fused all-reduce recorded"
        assert any(e.get("ph") == "i" for e in events), "no cycle marks"
        # Begin/end balanced on every row.
        depth = {}
        for e in events:
            if e.get("ph") in ("B", "E"):
                depth[e["tid"]] = depth.get(e["tid"], 0) + (1 if e["ph"] == "B" else -1)
                assert depth[e["tid"]] >= 0
        assert all(d == 0 for d in depth.values()), depth
    print(f"rank {rank}: OK", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
