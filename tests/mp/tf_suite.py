"""tf_ops.py, tf_training.py and tf_compat.py in one launch: TensorFlow's import dominates a
rank's start-up on a small machine, so the multi-rank test pays it once per rank count."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tf_compat  # noqa: E402
import tf_ops  # noqa: E402
import tf_training  # noqa: E402
from _util import run_main  # noqa: E402

import fusecomm.tensorflow as hvd  # noqa: E402


def main():
    hvd.init()
    n, r = hvd.size(), hvd.rank()
    # Each part's time on rank 0, so that a slow CI run shows where it went.
    for part in (tf_ops, tf_training, tf_compat):  # tf_compat last: it restarts the engine
        start = time.perf_counter()
        part.run_checks(n, r)
        if r == 0:
            print(f"[tf_suite] {part.__name__} took {time.perf_counter() - start:.1f} s", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
