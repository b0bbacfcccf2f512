"""One rank fails inside a collective that its peers have already entered (its fusion buffer
cannot be allocated: an address-space limit set on that rank only). The peers are left waiting
on it, so the failing rank must not go on: its next collective would leave them waiting forever,
and its messages (same tags, same peers) could match the receives they abandoned, returning
wrong data. Instead its transport is aborted: its later calls fail at once with the cause, and
every other rank gets an error naming it within the liveness timeout (set short by the test).
Arguments: the failing rank. Every rank prints one "FAILED AS EXPECTED" line."""
import os
import resource
import sys
import time

import numpy as np

import fusecomm as hvd
from _util import run_main

ELEMENTS = 8 << 20  # two float32 tensors of 32 MiB: a 64 MiB fusion buffer
LIVENESS_SECONDS = float(os.environ.get("FUSECOMM_LIVENESS_TIMEOUT_SECONDS", "15"))


def address_space_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def main():
    victim = int(sys.argv[1])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    # Warm up on small tensors: the engine's threads, MPI's buffers and the allocator's arenas
    # exist before the limit is set, so only the large fusion buffer can fail.
    for step in range(3):
        outs = hvd.grouped_allreduce_([np.full(16, rank + 1.0, np.float32) for _ in range(2)],
                                      op=hvd.Sum, name=f"warm.{step}", algorithm="ring")
        assert all(o.tolist() == [n * (n + 1) / 2] * 16 for o in outs), outs
    tensors = [np.full(ELEMENTS, rank + 1.0, np.float32) for _ in range(2)]  # in place
    if rank == victim:
        limit = address_space_bytes() + (24 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    started = time.monotonic()
    try:
        hvd.grouped_allreduce_(tensors, op=hvd.Sum, name="large", algorithm="ring")
        raise AssertionError(f"rank {rank}: the large all-reduce succeeded; the address-space "
                             f"limit on rank {victim} did not make it fail")
    except hvd.CollectiveError as e:
        first = str(e)
    elapsed = time.monotonic() - started
    if rank == victim:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert "allreduce of 'large." in first and "bad_alloc" in first, first
    else:
        assert f"rank {victim}" in first, first
    # The next collective fails at once with the same cause on every rank: no rank goes on,
    # so no message of it can meet a receive abandoned in the failed one.
    later_started = time.monotonic()
    try:
        out = hvd.allreduce(np.full(4, rank + 1.0), op=hvd.Sum, name="after")
        raise AssertionError(f"rank {rank}: a collective after the failure returned {out}")
    except (hvd.CollectiveError, hvd.NotInitializedError) as e:
        later = str(e)
    later_elapsed = time.monotonic() - later_started
    assert later_elapsed < 5, f"the later call took {later_elapsed:.1f}s to fail: {later}"
    expected_later = "bad_alloc" if rank == victim else f"rank {victim}"
    assert expected_later in later, later
    print(f"rank {rank}: FAILED AS EXPECTED after {elapsed:.1f}s: {first} | later: {later}",
          flush=True)
    # A rank whose transport is aborted exits without MPI_Finalize, and mpirun then ends the
    # job: the victim stays until its peers have declared it, and they stay a moment so that
    # each of them gets to report.
    time.sleep(LIVENESS_SECONDS + 6 if rank == victim else 3)


if __name__ == "__main__":
    run_main(main)
