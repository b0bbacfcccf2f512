"""Set-up and checks shared by the TensorFlow multi-rank scripts (tests/mp/tf_*.py)."""
import os

# Before TensorFlow loads: quiet logs, and oneDNN off so CPU kernels are the same on every rank.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _util import check_bugs_visible  # noqa: E402

# Several ranks share two cores.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

# Tolerances for values reduced in each dtype (relative to the largest magnitude).
RTOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-6, "float64": 1e-12}


def assert_close(got, want, what, dtype_name=None, rtol=None):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    dtype_name = dtype_name or want.dtype.name
    if dtype_name in RTOL or rtol is not None:
        tol = rtol if rtol is not None else RTOL[dtype_name]
        g, w = got.astype(np.float64), want.astype(np.float64)
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        err = float(np.abs(g - w).max()) if w.size else 0.0
        assert err <= tol * scale, f"{what}: max error {err:g} > {tol * scale:g}\n{g}\n{w}"
    else:
        assert np.array_equal(got, want), f"{what}: {got} != {want}"


def same_on_all_ranks(arrays, what):
    """Checks (through allgather) that every rank holds bitwise the same arrays."""
    import fusecomm

    flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])[None]
    gathered = fusecomm.allgather(flat)
    for r in range(1, gathered.shape[0]):
        assert np.array_equal(gathered[r], gathered[0]), f"{what}: rank {r} differs from rank 0"



def assert_params_match(got, want, what, rtol, wrong=()):
    """Every parameter, the last included, equals the single-process reference, and the bugs in
    `wrong` would show (_util.check_bugs_visible)."""
    assert len(got) == len(want), f"{what}: {len(got)} parameters, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, f"{what}: parameter {i} of {len(want)}", rtol=rtol)
    check_bugs_visible(want, wrong, what, rtol)
