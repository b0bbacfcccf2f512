"""Horovod's TensorFlow 2 and Keras MNIST examples, with only the import changed (and synthetic
data, fewer steps, Keras 3's renames: see each script's docstring), train under mpirun on 2 and
3 ranks: every rank ends with the same weights, the loss falls, and the Keras job resumes from
its checkpoint with load_model, its optimizer still distributed."""
import re

import pytest

from conftest import run_ranks

pytest.importorskip("tensorflow")

ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "FUSECOMM_CYCLE_TIME_MS": "5",
       # MPI_Finalize's watchdog waits this long too: on a loaded machine, the exit of ranks that
       # restarted the engine several times has taken over the default 15 s.
       "FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "60"}


@pytest.mark.parametrize("ranks", [2, 3])
def test_tensorflow2_mnist(ranks, tmp_path):
    out = run_ranks("tf_hvd_tensorflow2_mnist.py", ranks,
                    env={**ENV, "CHECKPOINT_DIR": str(tmp_path / "ckpt")}, timeout=300)
    finals = re.findall(r"rank (\d+) final loss ([0-9.]+) weights identical on (\d+) ranks", out)
    assert sorted(int(r) for r, _, _ in finals) == list(range(ranks)), out[-3000:]
    assert all(int(same) == ranks for _, _, same in finals), out[-3000:]
    steps = [float(v) for v in re.findall(r"Step #\d+\tLoss: ([0-9.]+)", out)]
    assert steps and min(steps[-2:]) < steps[0], out[-3000:]
    assert list(tmp_path.glob("ckpt*.index")), "rank 0 wrote no checkpoint"


@pytest.mark.parametrize("ranks", [2, 3])
def test_tensorflow2_keras_mnist_and_resume(ranks, tmp_path):
    out = run_ranks("tf_hvd_keras_mnist.py", ranks, env={**ENV, "CHECKPOINT_DIR": str(tmp_path)},
                    timeout=300)
    lines = re.findall(r"rank (\d+) losses ([0-9.,]+) resumed optimizer (\w+) iterations (\d+) "
                       r"weights identical on (\d+) ranks", out)
    assert sorted(int(line[0]) for line in lines) == list(range(ranks)), out[-3000:]
    for _, losses, optimizer, iterations, same in lines:
        losses = [float(v) for v in losses.split(",")]
        assert losses[-1] < losses[0], losses
        assert optimizer == "_DistributedOptimizer", optimizer
        assert int(iterations) == 4 * (48 // ranks), iterations
        assert int(same) == ranks, out[-3000:]
    # MetricAverageCallback: every rank logged the same (averaged) losses.
    assert len({line[1] for line in lines}) == 1, lines
