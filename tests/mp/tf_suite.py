"""tf_ops.py, tf_training.py and tf_compat.py in one launch: TensorFlow's import dominates a
rank's start-up on a small machine, so the multi-rank test pays it once per rank count."""
import sys
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
    tf_ops.run_checks(n, r)
    tf_training.run_checks(n, r)
    tf_compat.run_checks(n, r)  # last: it restarts the engine
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
