"""Multi-rank tests of fusecomm.tensorflow under mpirun, 2, 3 and 4 ranks. One launch per rank
count runs tests/mp/tf_suite.py, which runs:

tf_ops.py: every collective against NumPy references, eagerly and in tf.function, for every dtype
    and sizes 0, 1 and primes; gradients through every collective; errors across ranks.
tf_training.py: N ranks training on shards end with the weights of one process training on the
    whole batch: DistributedGradientTape, model.fit + DistributedOptimizer + callbacks,
    backward_passes_per_step=2, and a custom apply_gradients loop with embeddings.
tf_compat.py: Horovod compatibility: graph names in any build order, the TF1 API, Partial
    DistributedGradientTape, a Keras job resumed with load_model, stall recovery, no cascade."""
import pytest

from conftest import run_ranks

pytest.importorskip("tensorflow")

# A longer idle cycle: the engines of four ranks poll less while TensorFlow traces on two cores
# (a submission still wakes the engine at once).
# The installed fusecomm is used (no PYTHONPATH to the source tree, which has no built module).
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "FUSECOMM_CYCLE_TIME_MS": "5",
       # MPI_Finalize's watchdog waits this long too: on a loaded machine, the exit of ranks that
       # restarted the engine several times has taken over the default 15 s.
       "FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "60"}


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_tensorflow_multirank(ranks):
    out = run_ranks("tf_suite.py", ranks, env=ENV, timeout=480)
    for part in ("tf_ops", "tf_training", "tf_compat"):
        assert f"{part} OK on {ranks} ranks" in out, out[-4000:]
