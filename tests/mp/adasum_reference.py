"""NumPy reference of Adasum for the multi-rank tests: Maleki et al.'s pairwise formula over the
binary tree csrc/collectives/adasum_allreduce.cc documents (ranks p'+i fold into i, p' the
largest power of two <= p; then blocks of d ranks pair with their neighbours, d = 1, 2, 4, ...)."""
import numpy as np


def adasum_pair(a, b, dtype=np.float64):
    """(1 - a.b/(2|a|^2)) a + (1 - a.b/(2|b|^2)) b in float64, rounded to dtype; a zero norm's
    coefficient is 1."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot, aa, bb = a64 @ b64, a64 @ a64, b64 @ b64
    ca = 1.0 - dot / (2 * aa) if aa > 0 else 1.0
    cb = 1.0 - dot / (2 * bb) if bb > 0 else 1.0
    return (ca * a64 + cb * b64).astype(dtype)


def adasum_tree(vectors, dtype=np.float64):
    """vectors: one 1-D array per rank (one tensor); each pairwise sum rounds to dtype."""
    p2 = 1
    while p2 * 2 <= len(vectors):
        p2 *= 2
    blocks = [np.asarray(v).astype(dtype) for v in vectors[:p2]]
    for i in range(len(vectors) - p2):
        blocks[i] = adasum_pair(blocks[i], np.asarray(vectors[p2 + i]).astype(dtype), dtype)
    while len(blocks) > 1:
        blocks = [adasum_pair(blocks[k], blocks[k + 1], dtype)
                  for k in range(0, len(blocks), 2)]
    return blocks[0]
