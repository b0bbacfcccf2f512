"""`auto` by measurement: the first buffer of each (dtype, power-of-two size class) races the
algorithms the cost model short-lists, and the fastest runs that class from then on. Checks
that the results are right on every rank, that every rank measured and chose the same, that the
choice is the fastest measured, that the short list is the model's, that a class is measured
once, and that FUSECOMM_AUTOTUNE=0 leaves the model alone. Arguments: seed, `on` or `off`."""
import sys

import numpy as np

import fusecomm as hvd
from _util import rank_data, run_main
from core_collectives import check_equal
from fusecomm._frontend.validate import dtype_code

SHORTLIST_FACTOR, SHORTLIST_SECONDS = 2.0, 100e-6  # csrc/collectives/auto_tuner.h


def candidates():
    names = ["native", "ring", "rhd", "torus2d"]
    if hvd.local_size() < hvd.size():  # several (virtual) nodes, all the same size here
        names += ["hierarchical", "hierarchical_scatter"]
    else:  # one node: the ranks share memory
        names += ["shm"]
    return names


def model_pick(nbytes):
    predicted = {a: hvd._core.predict_seconds(a, nbytes) for a in candidates()}
    return min(predicted, key=predicted.get), predicted


def shortlist(nbytes):
    _, predicted = model_pick(nbytes)
    best = min(predicted.values())
    return {a for a, t in predicted.items()
            if t <= SHORTLIST_FACTOR * best or t <= best + SHORTLIST_SECONDS}


def size_class(nbytes):
    return nbytes.bit_length() - 1


def main():
    seed, mode = int(sys.argv[1]), sys.argv[2]
    hvd.init()
    rank, n = hvd.rank(), hvd.size()
    assert hvd._core.tuned_classes() == [], "measured before any all-reduce"
    rng = np.random.default_rng(seed)  # the same draws on every rank
    counts = [1, 2, 3, 13, 1021, 4099, 65537] + [int(c) for c in rng.integers(5, 300000, 4)]
    cases = [(c, str(rng.choice(["float32", "int32", "float64"]))) for c in counts]
    # Before measuring, auto is the model's choice.
    for count, dtype in cases:
        nbytes = count * np.dtype(dtype).itemsize
        assert hvd._core.auto_algorithm(nbytes, dtype_code(dtype)) == model_pick(nbytes)[0]

    first_in_class = {}
    for i, (count, dtype) in enumerate(cases):
        for repeat in range(2):  # the second one of a class must not measure again
            x = rank_data(seed + i, rank, (count,), dtype)
            got = hvd.allreduce(x, op=hvd.Sum, name=f"tuned.{i}.{repeat}", algorithm="auto")
            ref = sum(rank_data(seed + i, q, (count,), dtype) for q in range(n))
            check_equal(got, ref, dtype, f"auto {dtype} x {count}")
        first_in_class.setdefault((dtype, size_class(count * np.dtype(dtype).itemsize)),
                                  count * np.dtype(dtype).itemsize)

    classes = hvd._core.tuned_classes()
    if mode == "off":
        assert classes == [], classes
        for count, dtype in cases:
            nbytes = count * np.dtype(dtype).itemsize
            assert hvd._core.auto_algorithm(nbytes, dtype_code(dtype)) == model_pick(nbytes)[0]
        print(f"rank {rank}: OK (autotune off, {len(cases)} sizes)", flush=True)
        hvd.shutdown()
        return

    # One entry per class, timed at the first size seen in it.
    got_classes = {(c["dtype"], size_class(c["bytes"])): c for c in classes}
    assert len(got_classes) == len(classes), classes
    assert {k: c["bytes"] for k, c in got_classes.items()} == first_in_class, classes
    raced = 0
    for c in classes:
        listed = shortlist(c["bytes"])
        if len(listed) == 1:  # nothing to race: the model's only candidate, untimed
            assert c["seconds"] == {} and c["chosen"] == next(iter(listed)), c
            continue
        raced += 1
        assert set(c["seconds"]) == listed, (c, listed)
        assert all(t > 0 for t in c["seconds"].values()), c
        assert c["chosen"] == min(c["seconds"], key=c["seconds"].get), c
        # auto now answers the measured choice for any size of the class and dtype.
        for nbytes in (c["bytes"], (1 << size_class(c["bytes"])) * 2 - 1):
            assert hvd._core.auto_algorithm(nbytes, dtype_code(c["dtype"])) == c["chosen"]
    assert raced > 0, "no class had two candidates to race"
    # Every rank measured the same numbers (the slowest rank's) and chose alike.
    assert hvd.allgather_object(classes) == [classes] * n
    print(f"rank {rank}: OK ({len(classes)} classes, {raced} raced)", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
