"""Run by `fusecomm run` in tests: prints what the launcher set up, fails on request."""
import os
import sys

import numpy as np

import fusecomm as hvd
from _util import run_main


def main():
    hvd.init()
    out = hvd.allreduce(np.ones(4), op=hvd.Sum, name="launcher")
    assert out.tolist() == [float(hvd.size())] * 4
    print(f"rank {hvd.rank()} size {hvd.size()} local_size {hvd.local_size()} "
          f"cycle={os.environ.get('FUSECOMM_CYCLE_TIME_MS')}", flush=True)
    code = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    hvd.shutdown()
    if code and hvd_rank_is(1):
        sys.exit(code)


def hvd_rank_is(r):
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", "-1")) == r


if __name__ == "__main__":
    run_main(main)
