"""The cost model `auto` chooses with, checked on 4 ranks as 2 virtual nodes of 2, from a
calibration file (FUSECOMM_CALIBRATION_FILE) the test wrote. Predicted times are compared with
the α-β-γ formulas written out here independently (closed forms for even splits), and the choice
with a slow inter-node link must move to a two-level scheme. Arguments: the file, and
`slow_inter` or `uniform`."""
import sys

import fusecomm as hvd
from _util import run_main


def parse(text):
    return {k: float(v) for k, v in (line.split() for line in text.strip().splitlines())}


def formula(m, algorithm, n):
    """Seconds for p = 4 ranks, k = 2 per node, 2 nodes, n bytes (n divisible by 4).
    Each term: (steps, bytes sent) of the busiest rank on the intra-node link, the inter-node
    link (every local rank's flow at once) and the ring over all ranks."""
    intra, inter, ring = (0, 0), (0, 0), (0, 0)
    if algorithm == "ring":            # one ring over all ranks: priced by the measured ring
        ring = (2 * 3, 2 * n * 3 // 4)
    elif algorithm == "rhd":           # 2 lg 4 exchanges, the widest across nodes: inter
        inter = (2 * 2, 2 * n * 3 // 4)
    elif algorithm == "hierarchical":  # leader: reduce (1 round), ring of 2 leaders, broadcast n
        intra, inter = (2, n), (2, n)
    elif algorithm in ("hierarchical_scatter", "torus2d"):  # rows = nodes: RS/AG in the node
        intra, inter = (2, n), (2, n // 2)
    else:
        raise ValueError(algorithm)
    sent = intra[1] + inter[1] + ring[1]
    return (intra[0] * m["alpha_intra"] + intra[1] * m["beta_intra"] +
            inter[0] * m["alpha_inter"] + inter[1] * m["beta_inter"] +
            ring[0] * m["alpha_ring"] + ring[1] * m["beta_ring"] + 0.5 * sent * m["gamma"])


def main():
    path, mode = sys.argv[1], sys.argv[2]
    hvd.init()
    assert hvd.size() == 4 and hvd.local_size() == 2, (hvd.size(), hvd.local_size())
    expected = parse(open(path).read())
    reported = parse(hvd._core.cost_model().split("\n", 1)[1])  # after the "calibrated" line
    assert reported == expected, (reported, expected)
    for n in (4096, 1 << 20, 64 << 20):
        for algorithm in ("ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d"):
            predicted = hvd._core.predict_seconds(algorithm, n)
            want = formula(expected, algorithm, n)
            assert abs(predicted - want) <= 1e-9 * want, (algorithm, n, predicted, want)
    large = hvd._core.auto_algorithm(64 << 20)
    if mode == "slow_inter":
        assert large in ("hierarchical_scatter", "torus2d"), large
    else:
        assert large == "rhd", large  # same bytes as the ring in fewer steps
    # 8 B: MPI_Allreduce measured at 1 us beats any schedule of α = 10 us steps.
    assert hvd._core.auto_algorithm(8) == "native", hvd._core.auto_algorithm(8)
    print(f"rank {hvd.rank()}: OK (64 MiB -> {large})", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
