"""The soak benchmark's quick mode (benchmarks/soak.py --quick) on every rank: 10,000 small
all-reduces and 100 fused 10 MiB ones, every result checked, resident memory sampled; asserts the
no-growth verdict. Arguments: passed through to benchmarks/soak.py (e.g. --json PATH)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402  (benchmarks/soak.py)
from _util import run_main  # noqa: E402


def main():
    ok, summaries = soak.run(["--quick", *sys.argv[1:]])
    mine = [s for s in summaries if s["rank"] == soak_rank()]
    for s in mine:
        assert s["wrong"] == 0, f"wrong results in the {s['phase']} phase: {s}"
        assert s["ok"], (f"RSS grew in the {s['phase']} phase: {s['growth_mb']:+.2f} MB after "
                         f"warm-up (limit {s['limit_mb']:.2f} MB): {s}")
    assert ok, "another rank's soak failed (see the table)"
    print(f"SOAK OK rank {soak_rank()}", flush=True)


def soak_rank():
    import fusecomm

    return fusecomm.rank()


if __name__ == "__main__":
    run_main(main)
