"""Horovod compatibility of fusecomm.tensorflow on several ranks, against NumPy references:
graph-mode (tf.compat.v1 Session) names that agree whatever order each rank builds its graph
in, the TF1 API (broadcast_global_variables, BroadcastGlobalVariablesHook), Partial
DistributedGradientTape, a Keras job that saves and resumes with load_model and still averages
gradients, and recovery: a stall fails the stalled collectives, names them, and init() starts
the engine again; a check failing on one rank does not wreck the next (tests/mp/_isolated.py)."""
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tf_common  # noqa: E402,F401  (sets TensorFlow up before it loads)
from tf_common import assert_close, same_on_all_ranks  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _isolated import run_isolated  # noqa: E402
from _util import rank_data, run_main  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow as hvd  # noqa: E402
import fusecomm.tensorflow.keras as hvd_keras  # noqa: E402

# A short stall limit while the recovery checks run (set through init(), as a user would); the
# deadlock detector (every rank blocked for deadlock_seconds) usually reports first. Its default
# 5 s is shortened: what is checked here is the recovery, and the wait is most of this file's time.
STALL = {"stall_shutdown_seconds": 6, "stall_warning_seconds": 0, "deadlock_seconds": 2}
NO_STALL = {"stall_shutdown_seconds": 0, "stall_warning_seconds": 60}
STOPPED = re.compile("stalled collectives|deadlock: every rank is waiting")


def run_graph(build):
    """Builds `build()`'s tensors (one, or a dict) in a fresh tf.compat.v1 graph and runs them
    in a Session, one fetch at a time in key order: independent collectives of one
    session.run may start in any order, each holding a thread until its peers arrive."""
    with tf.Graph().as_default():
        fetches = build()
        with tf.compat.v1.Session() as session:
            if not isinstance(fetches, dict):
                return session.run(fetches)
            return {k: session.run(fetches[k]) for k in sorted(fetches)}


def check_names_in_any_build_order(n, r):
    """Even ranks build their graph's collectives (and tf.gradients) in one order, odd ranks in
    the reverse one; before, names followed the build order and the collectives crossed."""
    shapes = {"a": (3,), "b": (5, 2), "c": (2, 4)}
    data = {k: [rank_data(40 + i, q, s, "float32") for q in range(n)]
            for i, (k, s) in enumerate(shapes.items())}
    coef = {k: [rank_data(50 + i, q, (n * s[0],) + s[1:], "float32") for q in range(n)]
            for i, (k, s) in enumerate(shapes.items())}

    def build():
        xs = {k: tf.constant(v[r], name=k) for k, v in data.items()}
        order = list(xs) if r % 2 == 0 else list(reversed(xs))
        out = {}
        for k in order:
            out[f"sum_{k}"] = hvd.allreduce(xs[k], op=hvd.Sum)
            out[f"gather_{k}"] = hvd.allgather(xs[k])
        for k in order:  # tf.gradients scopes ("gradients", "gradients_1") follow the order too
            loss = tf.reduce_sum(hvd.allgather(xs[k]) * tf.constant(coef[k][r]))
            out[f"grad_{k}"] = tf.gradients(loss, xs[k])[0]
        return out

    got = run_graph(build)
    for k, shape in shapes.items():
        assert_close(got[f"sum_{k}"], np.sum(data[k], 0), f"graph order {k} sum")
        assert_close(got[f"gather_{k}"], np.concatenate(data[k]), f"graph order {k} gather")
        rows = shape[0]
        want = np.mean(coef[k], 0)[r * rows:(r + 1) * rows]
        assert_close(got[f"grad_{k}"], want, f"graph order {k} allgather gradient")


def check_tf1_api(n, r):
    """broadcast_global_variables and BroadcastGlobalVariablesHook in a tf.compat.v1 graph."""
    try:
        hvd.broadcast_global_variables(0)
    except RuntimeError as e:
        assert "eager" in str(e), e
    else:
        raise AssertionError("broadcast_global_variables did not refuse eager execution")
    root = n - 1
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=rank_data(60, r, (4, 2), "float32"))
        step = tf.compat.v1.get_variable("step", initializer=np.int64(r * 10))
        bcast = hvd.broadcast_global_variables(root)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(bcast)
            assert_close(session.run(w), rank_data(60, root, (4, 2), "float32"), "bgv w")
            assert session.run(step) == root * 10
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", initializer=rank_data(61, r, (3,), "float64"))
        hook = hvd.BroadcastGlobalVariablesHook(root)
        with tf.compat.v1.train.MonitoredSession(hooks=[hook]) as session:
            assert_close(session.run(w), rank_data(61, root, (3,), "float64"), "hook w")


def check_partial_tape(n, r):
    """Gradients of the local layer stay on their rank (divided by the size, as in Horovod);
    the others are averaged; eagerly and in tf.function."""
    shared = keras.layers.Dense(2, kernel_initializer="ones")
    local = keras.layers.Dense(1, kernel_initializer="ones")
    x = tf.constant(rank_data(62, r, (3, 4), "float32"))
    local(shared(x))  # builds both
    variables = shared.trainable_weights + local.trainable_weights

    def loss_fn():
        return tf.reduce_sum(local(shared(x)) ** 2)

    with tf.GradientTape() as tape:
        loss = loss_fn()
    own = [g.numpy() for g in tape.gradient(loss, variables)]
    every = fusecomm.allgather_object(own, name="partial_tape.own")

    def partial_gradients():
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return hvd.PartialDistributedGradientTape(tape, local_layers=[local]).gradient(
            loss, variables)

    for mode, fn in (("eager", partial_gradients), ("tf.function", tf.function(partial_gradients))):
        got = fn()
        for i, g in enumerate(got):
            if i < len(shared.trainable_weights):
                want = np.mean([every[q][i] for q in range(n)], 0)
            else:
                want = own[i] / n
            assert_close(g, want, f"{mode} partial tape gradient {i}", rtol=1e-5)


def check_keras_resume(n, r):
    """A Keras job trains, rank 0 saves it, every rank resumes with load_model: the optimizer is
    still distributed (its next step applies the average of the ranks' gradients) and its state
    (iterations, momentum) is the saved one."""
    folder = fusecomm.broadcast_object(tempfile.mkdtemp() if r == 0 else None, 0,
                                       name="keras_resume.dir")
    path = os.path.join(folder, "model.keras")
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9)), loss="mse")
    x, y = rank_data(63, r, (8, 4), "float32"), rank_data(64, r, (8, 2), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)])
    if r == 0:
        model.save(path)
    hvd.barrier()
    resumed = hvd_keras.load_model(path)
    assert isinstance(resumed.optimizer, hvd_keras._DistributedOptimizer), type(resumed.optimizer)
    assert int(resumed.optimizer.iterations.numpy()) == 2, resumed.optimizer.iterations
    for a, b in zip(model.weights, resumed.weights):
        assert_close(b.numpy(), a.numpy(), f"resumed weight {a.name}")
    variables = resumed.trainable_variables
    weights = [v.numpy() for v in variables]
    momenta = [m.numpy() for m in resumed.optimizer.momentums]
    assert any(np.abs(m).max() > 0 for m in momenta), "the momentum was not restored"
    grads = [rank_data(65 + i, r, w.shape, "float32") for i, w in enumerate(weights)]
    resumed.optimizer.apply([tf.constant(g) for g in grads], variables)
    for i, (v, w, m) in enumerate(zip(variables, weights, momenta)):
        mean = np.mean([rank_data(65 + i, q, w.shape, "float32") for q in range(n)], 0)
        assert_close(v.numpy(), w + 0.9 * m - 0.05 * mean, f"resumed step {v.name}", rtol=1e-5)
    # And through fit, on different data per rank: every rank ends with the same weights.
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0)
    same_on_all_ranks([v.numpy() for v in resumed.weights], "weights after resumed fit")
    hvd.barrier()
    if r == 0:
        os.remove(path)
        os.rmdir(folder)


def check_stall_recovery(n, r):
    """A stall (ranks diverging: rank 0's graph names its tensor differently) fails the stalled
    collectives on every rank with a report naming each tensor and the ranks missing it; init()
    alone then starts the engine again, eagerly, in tf.function and in a graph."""
    fusecomm.shutdown()
    fusecomm.init(**STALL)
    mine = "left" if r == 0 else "right"

    def build():
        return hvd.allreduce(tf.constant([1.0, 2.0], name=mine))

    try:
        run_graph(build)
    except tf.errors.OpError as e:
        text = str(e)  # the deadlock detector's report, or the stall limit's
        assert STOPPED.search(text) and f"'tf.allreduce_{mine}_0' submitted by" in text, text
        assert "missing on rank" in text, text
    else:
        raise AssertionError("diverging graph names did not stall")
    try:
        hvd.allreduce(tf.ones([2]))
    except fusecomm.NotInitializedError as e:
        assert STOPPED.search(str(e)), e
    else:
        raise AssertionError("the stopped engine accepted a collective")
    fusecomm.init()  # no shutdown() first: init() restarts a stopped engine
    assert_close(hvd.allreduce(tf.fill([3], float(r)), op=hvd.Sum),
                 np.full(3, n * (n - 1) / 2, np.float32), "eager after restart")
    assert_close(tf.function(lambda t: hvd.allgather(t))(tf.fill([1], float(r))),
                 np.arange(n, dtype=np.float32), "tf.function after restart")
    assert_close(run_graph(lambda: hvd.broadcast(tf.fill([2], float(r)), n - 1)),
                 np.full(2, n - 1, np.float32), "graph after restart")


def check_no_cascade(n, r):
    """run_isolated: a check that fails an assertion on rank 0 (which then never submits the
    collective its peers wait on) is reported for every rank, and the checks after it pass."""
    def fails_on_rank_0():
        assert r != 0, "deliberate failure on rank 0"
        hvd.allreduce(tf.ones([2]))  # unnamed: the other ranks' counters move on

    def unnamed_after():
        for _ in range(3):
            got = hvd.allreduce(tf.fill([2], float(r + 1)), op=hvd.Sum)
            assert_close(got, np.full(2, n * (n + 1) / 2, np.float32), "unnamed after failure")
        assert_close(tf.function(lambda t: hvd.allreduce(t, op=hvd.Sum))(tf.ones([3])),
                     np.full(3, n, np.float32), "tf.function after failure")

    failed = run_isolated([fails_on_rank_0, unnamed_after, unnamed_after], STALL)
    assert list(failed) == ["fails_on_rank_0"], failed
    assert "deliberate failure on rank 0" in failed["fails_on_rank_0"][0], failed
    for q in range(1, n):
        assert STOPPED.search(failed["fails_on_rank_0"][q]), failed


CHECKS = [check_names_in_any_build_order, check_tf1_api, check_partial_tape, check_keras_resume,
          check_stall_recovery, check_no_cascade]


def run_checks(n, r, only=()):
    for check in CHECKS:
        if not only or check.__name__ in only:
            check(n, r)
    fusecomm.shutdown()
    fusecomm.init(**NO_STALL)
    hvd.barrier()
    if r == 0:
        print(f"tf_compat OK on {n} ranks", flush=True)


def main():
    hvd.init()
    run_checks(hvd.size(), hvd.rank(), only=sys.argv[1:])  # check names, to run some only
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
