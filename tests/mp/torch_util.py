"""Helpers shared by the torch multi-rank scripts (tests/mp/torch_*.py)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import SIZES, rank_data, run_main  # noqa: E402,F401  (re-exported)

# Every dtype the engine supports, as torch dtypes.
DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
          torch.bfloat16, torch.float32, torch.float64, torch.bool]
if hasattr(torch, "uint16"):  # torch >= 2.3
    DTYPES.insert(2, torch.uint16)
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# Relative tolerance of one rounding in each floating dtype (twice the unit roundoff).
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2.5e-7,
        torch.float64: 5e-16}


def setup():
    """One thread per rank (several ranks share two cores), then init; returns (hvd, rank, size)."""
    torch.set_num_threads(1)
    import fusecomm.torch as hvd

    hvd.init()
    return hvd, hvd.rank(), hvd.size()


def rank_tensor(seed, rank, shape, dtype):
    """`rank`'s deterministic data (small integers, exact in every dtype), reproducible on
    every other rank for the reference."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(rank_data(seed, rank, shape, "float32")).to(torch.bfloat16)
    name = str(dtype).replace("torch.", "")
    return torch.from_numpy(rank_data(seed, rank, shape, name))


def all_ranks(seed, ranks, shape, dtype):
    return [rank_tensor(seed, q, shape, dtype) for q in ranks]


def expect_equal(actual, expected, what):
    """Every element, exactly, with the same dtype and shape."""
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    if not torch.equal(actual, expected):
        bad = (actual != expected).nonzero()[0].tolist()
        raise AssertionError(f"{what}: first mismatch at {bad}: {actual[tuple(bad)]} != "
                             f"{expected[tuple(bad)]}")


def expect_close(actual, expected, what, rtol=None, atol=0.0):
    """Every element within the rounding of the dtype (exact for integers and bool)."""
    if not expected.dtype.is_floating_point:
        return expect_equal(actual, expected, what)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    rtol = RTOL[expected.dtype] if rtol is None else rtol
    a, e = actual.double(), expected.double()
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: first mismatch at {list(idx)}: {a[idx].item()} != "
                             f"{e[idx].item()} (rtol {rtol}, atol {atol})")


def expect_raises(exc_type, fn, *needles):
    """fn() must raise exc_type with every needle in its message."""
    try:
        fn()
    except exc_type as e:
        for needle in needles:
            assert needle in str(e), f"message {str(e)!r} lacks {needle!r}"
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def scatter_rows(rows, n, r):
    """(start, count) of rank r's block when `rows` rows are split over n ranks, the first
    rows % n ranks getting one more (the reducescatter convention)."""
    counts = [rows // n + (1 if q < rows % n else 0) for q in range(n)]
    return sum(counts[:r]), counts[r]
