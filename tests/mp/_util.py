"""Helpers for the multi-rank test scripts (imported by scripts in tests/mp/)."""
import os
import sys
import traceback

import numpy as np

# Every dtype the core supports, as NumPy names (bfloat16 through ml_dtypes when present).
NUMPY_DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64",
                "bool"]
try:
    import ml_dtypes  # noqa: F401  (ships with TensorFlow)

    NUMPY_DTYPES.append("bfloat16")
except ImportError:
    pass

# Sizes every collective test covers: empty, one element, primes, and counts not divisible by
# any small rank count.
SIZES = [0, 1, 2, 3, 7, 13, 31, 127, 1021, 4099, 65537]


def numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rank_data(seed, rank, shape, dtype_name, for_product=False):
    """Deterministic data of `rank`, reproducible on every other rank for the reference.
    Small integers so that sums are exact in every dtype (fp16 included); for products of
    floats, signed powers of two, whose products are exact in any order on up to 8 ranks."""
    rng = np.random.default_rng([seed, rank])
    if for_product and dtype_name in ("float16", "bfloat16", "float32", "float64"):
        return rng.choice([-2.0, -1.0, 1.0, 2.0], size=shape).astype(numpy_dtype(dtype_name))
    if dtype_name == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype_name in ("uint8", "uint16"):
        return rng.integers(0, 4, size=shape).astype(numpy_dtype(dtype_name))
    return rng.integers(-3, 4, size=shape).astype(numpy_dtype(dtype_name))


def check_bugs_visible(reference, wrong, what, tolerance):
    """`wrong`: (bug, parameters) pairs, what training would reach with a plausible bug (no
    reduction: this rank's shard alone; gradients summed instead of averaged). Each must differ
    from the reference in every parameter, the last included, by far more than the tolerance of
    the test's comparison: otherwise that comparison could not see the bug."""
    for bug, trained in wrong:
        assert len(trained) == len(reference), (what, bug, len(trained), len(reference))
        for i, (b, r) in enumerate(zip(trained, reference)):
            r = np.asarray(r, np.float64)
            gap = float(np.abs(np.asarray(b, np.float64) - r).max())
            assert gap > 100 * tolerance * max(1.0, float(np.abs(r).max())), (
                f"{what}: with {bug}, parameter {i} would be off by only {gap:g}: the "
                f"comparison could not see that bug")


def run_main(main):
    """Runs main(); on any failure prints the traceback with the rank and exits 1, so mpirun
    reports the failure instead of hanging on the other ranks."""
    try:
        main()
    except Exception:  # noqa: BLE001 - SystemExit passes through with its code
        try:
            import fusecomm

            rank = fusecomm.rank() if fusecomm.is_initialized() else "?"
        except Exception:  # noqa: BLE001
            rank = "?"
        # The arguments carry the seed: with them the failure replays (docs/testing.md).
        script = os.path.basename(sys.argv[0])
        print(f"[rank {rank}] FAILED in {script} {' '.join(sys.argv[1:])}\n"
              f"{traceback.format_exc()}", flush=True)
        sys.stdout.flush()
        os._exit(1)
