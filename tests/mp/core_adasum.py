"""op=Adasum on every rank against a NumPy reference of Maleki et al.'s pairwise formula
adasum(a, b) = (1 - a.b/(2|a|^2)) a + (1 - a.b/(2|b|^2)) b, applied over the binary tree that
csrc/collectives/adasum_allreduce.cc documents: ranks p'+i fold into i (p' the largest power of
two <= p), then blocks of d ranks pair with their neighbours at d = 1, 2, 4, ...; per tensor, in
float64, rounded to the dtype after each pairwise sum. Covers float16/bfloat16/float32/float64,
sizes around the halving boundaries, fused groups (each tensor keeps its own coefficients),
zero tensors (adasum(a, 0) = a), pre/postscale, a joined rank, and the NumPy, torch and
TensorFlow faces.

Run: mpirun -np N python tests/mp/core_adasum.py SEED [torch|tensorflow]   (N = 2, 3, 4, 8)"""
import sys

import numpy as np

import fusecomm as hvd
from _util import numpy_dtype, run_main
from adasum_reference import adasum_tree

RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 4e-3, "bfloat16": 3e-2}


def rank_vector(seed, rank, tensor, size, dtype_name):
    rng = np.random.default_rng([seed, rank, tensor])
    # A shared direction plus noise: coefficients well away from 1 (parallel parts average).
    shared = np.random.default_rng([seed, tensor]).standard_normal(size)
    return (shared + 0.7 * rng.standard_normal(size)).astype(numpy_dtype(dtype_name))


def check(out, ref, what, dtype_name, seed):
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out64.shape == ref64.shape, f"{what}: shape {out64.shape} != {ref64.shape}"
    scale = max(1.0, float(np.abs(ref64).max())) if ref64.size else 1.0
    err = float(np.abs(out64 - ref64).max()) if ref64.size else 0.0
    assert err <= RTOL[dtype_name] * scale, \
        f"{what} (seed {seed}): max error {err:g} > {RTOL[dtype_name] * scale:g}"


def check_numpy(seed, r, n):
    dtypes = ["float32", "float16", "float64"]
    try:
        import ml_dtypes  # noqa: F401

        dtypes.append("bfloat16")
    except ImportError:
        pass
    for dtype_name in dtypes:
        dt = numpy_dtype(dtype_name)
        for size in [1, 2, 3, 7, 8, 33, 1000, 4099]:
            mine = rank_vector(seed, r, size, size, dtype_name)
            out = hvd.allreduce(mine, op=hvd.Adasum, name=f"adasum.{dtype_name}.{size}")
            ref = adasum_tree([rank_vector(seed, q, size, size, dtype_name)
                                    for q in range(n)], dt)
            assert out.dtype == dt, f"dtype {out.dtype} != {dt}"
            check(out, ref, f"{dtype_name} size {size}", dtype_name, seed)
        # Fused: tensors of different sizes share one buffer and the halving windows cut
        # through them; the second tensor is zero on every odd rank.
        sizes = [5, 300, 1, 77, 64]
        tensors = [rank_vector(seed, r, 100 + t, s, dtype_name) for t, s in enumerate(sizes)]
        if r % 2:
            tensors[1][:] = 0
        outs = hvd.grouped_allreduce(tensors, op=hvd.Adasum, name=f"adasum.group.{dtype_name}")
        for t, s in enumerate(sizes):
            per_rank = [rank_vector(seed, q, 100 + t, s, dtype_name) for q in range(n)]
            if t == 1:
                for q in range(1, n, 2):
                    per_rank[q][:] = 0
            check(outs[t], adasum_tree(per_rank, dt), f"group tensor {t} ({dtype_name})",
                  dtype_name, seed)
    # Orthogonal vectors add, identical vectors stay themselves (whatever the rank count).
    e = np.zeros(8, np.float64)
    e[r % 8] = 1.0
    expected = np.zeros(8)
    expected[: min(n, 8)] = 1.0
    check(hvd.allreduce(e, op=hvd.Adasum, name="orthogonal"), expected, "orthogonal",
          "float64", seed)
    same = np.linspace(-1, 1, 9)
    check(hvd.allreduce(same, op=hvd.Adasum, name="same"), same, "identical", "float64", seed)
    # Scales: prescale before the tree, postscale after (adasum is scale-equivariant).
    x = rank_vector(seed, r, 7, 50, "float64")
    ref = adasum_tree([rank_vector(seed, q, 7, 50, "float64") for q in range(n)],
                           np.float64)
    out = hvd.allreduce(x, op=hvd.Adasum, prescale_factor=2.0, postscale_factor=0.25,
                        name="scaled")
    check(out, ref * 0.5, "pre/postscale", "float64", seed)
    # join(): the last rank leaves first; its stand-in zeros are adasum's identity.
    vectors = [rank_vector(seed, q, 8, 30, "float32") for q in range(n)]
    if r != n - 1:
        out = hvd.allreduce(vectors[r], op=hvd.Adasum, name="adasum.joined")
        expected = adasum_tree(vectors[:-1] + [np.zeros(30, np.float32)], np.float32)
        check(out, expected, "with the last rank joined", "float32", seed)
    last = hvd.join()
    assert (last == 0) if n == 1 else (last != n - 1), \
        f"join() returned rank {last}, which joined first"


def check_framework(framework, seed, r, n):
    x = rank_vector(seed, r, 9, 40, "float32")
    ref = adasum_tree([rank_vector(seed, q, 9, 40, "float32") for q in range(n)],
                           np.float32)
    if framework == "torch":
        import torch

        import fusecomm.torch as hvd_torch

        torch.set_num_threads(1)
        out = hvd_torch.allreduce(torch.from_numpy(x.copy()), op=hvd_torch.Adasum,
                                  name="adasum.torch").numpy()
    else:
        from tf_common import tf  # one thread per rank

        import fusecomm.tensorflow as hvd_tf

        out = hvd_tf.allreduce(tf.constant(x), op=hvd_tf.Adasum, name="adasum.tf").numpy()
    check(out, ref, f"{framework} allreduce", "float32", seed)


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    if len(sys.argv) > 2:
        check_framework(sys.argv[2], seed, r, n)
    else:
        check_numpy(seed, r, n)
    hvd.barrier()
    print(f"[rank {r}] core_adasum OK on {n} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
