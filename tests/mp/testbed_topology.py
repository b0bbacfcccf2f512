"""Run across `fusecomm testbed` nodes: fusecomm's topology must be the testbed's, found by MPI
(no FUSECOMM_LOCAL_SIZE): each node's hostname, its ranks sharing it, the nodes counted.
Arguments: number of nodes, slots per node, node name prefix."""
import os
import socket
import sys

import numpy as np

import fusecomm as hvd
from _util import run_main


def main():
    nodes, slots, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    assert "FUSECOMM_LOCAL_SIZE" not in os.environ, "the topology must not be forced"
    hvd.init()
    rank = hvd.rank()
    host = socket.gethostname()
    # fusecomm run -H fills node1's slots first, then node2's.
    expected_host = f"{prefix}{rank // slots + 1}"
    assert host == expected_host, f"rank {rank} runs on {host}, expected {expected_host}"
    assert (hvd.size(), hvd.local_size(), hvd.cross_size()) == (nodes * slots, slots, nodes), \
        (hvd.size(), hvd.local_size(), hvd.cross_size())
    assert (hvd.local_rank(), hvd.cross_rank()) == (rank % slots, rank // slots)
    names = hvd.allgather_object(host, name="hosts")
    assert names == [f"{prefix}{q // slots + 1}" for q in range(hvd.size())], names
    total = hvd.allreduce(np.array([rank], np.int64), op=hvd.Sum, name="ranks")
    assert total[0] == hvd.size() * (hvd.size() - 1) // 2
    print(f"rank {rank}: OK on {host} (local {hvd.local_rank()}/{hvd.local_size()}, "
          f"cross {hvd.cross_rank()}/{hvd.cross_size()})", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
