"""Randomized stress: several Python threads per rank submit thousands of collectives of random
op, dtype, size (0 included) and name, each rank in its own order; every result is checked
against NumPy. Arguments: seed, operations per thread."""
import sys
import threading

import numpy as np

import fusecomm as hvd
from _util import NUMPY_DTYPES, rank_data, run_main
from core_collectives import check_equal, reference

THREADS = 3
OPS = ["allreduce", "allgather", "broadcast", "reducescatter", "alltoall"]
REDUCE_OPS = [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product]


def plan(seed, thread, count, n):
    """The same list of operations on every rank (names and shapes must agree)."""
    rng = np.random.default_rng([seed, thread])
    items = []
    for i in range(count):
        op = OPS[rng.integers(len(OPS))]
        dtype = NUMPY_DTYPES[rng.integers(len(NUMPY_DTYPES))]
        reduce_op = REDUCE_OPS[rng.integers(len(REDUCE_OPS))]
        if dtype == "bool" and reduce_op == hvd.Average:
            reduce_op = hvd.Max
        size = int(rng.choice([0, 1, 2, 5, 17, 100, 1000, 4099]))
        items.append(dict(name=f"t{thread}.{i}", op=op, dtype=dtype, reduce_op=reduce_op,
                          size=size, root=int(rng.integers(n)), key=seed * 100003 + thread * 7919 + i))
    return items


def submit(item, rank, n):
    data = [rank_data(item["key"], q, (item["size"], 2), item["dtype"],
                      item["reduce_op"] == hvd.Product) for q in range(n)]
    op, name = item["op"], item["name"]
    if op == "allreduce":
        h = hvd.allreduce_async(data[rank], name=name, op=item["reduce_op"])
        expect = reference(item["reduce_op"], data, item["dtype"], n)
    elif op == "allgather":
        h = hvd.allgather_async(data[rank], name=name)
        expect = np.concatenate(data)
    elif op == "broadcast":
        h = hvd.broadcast_async(data[rank], item["root"], name=name)
        expect = data[item["root"]]
    elif op == "reducescatter":
        if item["dtype"] == "bool":
            item["reduce_op"] = hvd.Max
        rop = item["reduce_op"] if item["reduce_op"] != hvd.Product else hvd.Sum
        h = hvd.reducescatter_async(data[rank], name=name, op=rop)
        full = reference(rop, data, item["dtype"], n)
        rows = item["size"]
        start = sum(rows // n + (q < rows % n) for q in range(rank))
        expect = full[start:start + rows // n + (rank < rows % n)]
    else:  # alltoall with equal splits of the rows that divide
        rows = (item["size"] // n) * n
        data = [d[:rows] for d in data]
        h = hvd.alltoall_async(data[rank], name=name)
        per = rows // n
        expect = np.concatenate([data[q][rank * per:(rank + 1) * per] for q in range(n)])
    return h, expect


def worker(seed, thread, count, rank, n, errors):
    try:
        items = plan(seed, thread, count, n)
        rng = np.random.default_rng([seed, thread, rank])
        # Blocks of 20 in flight, submitted and then waited on in this rank's own orders (a
        # rank waits only on what every rank submits in the same block: no deadlock by design).
        for start in range(0, count, 20):
            block = items[start:start + 20]
            entries = [(block[i], *submit(block[i], rank, n)) for i in rng.permutation(len(block))]
            for i in rng.permutation(len(entries)):
                check(entries[i])
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        errors.append(f"thread {thread}: {type(e).__name__}: {e}")


def check(entry):
    item, handle, expect = entry
    out = hvd.synchronize(handle)
    if item["op"] == "alltoall":
        out = out[0]
    avg_float = item["reduce_op"] == hvd.Average and item["dtype"] in ("float16", "bfloat16",
                                                                     "float32", "float64")
    rtol = 1e-2 if avg_float else 0
    if item["op"] in ("allreduce", "reducescatter"):
        check_equal(out, expect, item["dtype"], item["name"], rtol)
    else:
        check_equal(out, expect, item["dtype"], item["name"])


def main():
    seed = int(sys.argv[1])
    count = int(sys.argv[2])
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    errors = []
    threads = [threading.Thread(target=worker, args=(seed, t, count, rank, n, errors))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print(f"rank {rank}: OK ({THREADS * count} collectives)", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
