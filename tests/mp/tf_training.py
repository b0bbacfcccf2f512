"""Data-parallel training equals one process training on the whole batch: DistributedGradientTape
(tf.function and eager, sparse and dense embedding gradients, every option), Keras 3 model.fit
with DistributedOptimizer + callbacks, backward_passes_per_step=2, and a custom loop through
optimizer.apply_gradients. Every rank computes the single-process reference itself."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tf_common  # noqa: E402,F401  (sets TensorFlow up before it loads)
from tf_common import assert_close, assert_params_match, same_on_all_ranks  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _util import run_main  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow as hvd  # noqa: E402
import fusecomm.tensorflow.keras as hvd_keras  # noqa: E402
from fusecomm.tensorflow import _batch, mpi_ops  # noqa: E402

GLOBAL_BATCH = 12  # divisible by 2, 3 and 4
STEPS = 4
VOCAB, DIM, OUT = 20, 4, 3


class BatchLog:
    """Records what fusecomm does: engine submissions/waits and numpy batches."""

    def __init__(self):
        self.events, self.batches = [], []
        self._submit, self._sync, self._run = (fusecomm._engine.submit,
                                               fusecomm._engine.synchronize, _batch.run_numpy)

    def __enter__(self):
        def submit(*a, **k):
            self.events.append("submit")
            return self._submit(*a, **k)

        def sync(h):
            self.events.append("wait")
            return self._sync(h)

        def run(items, names, arrays):
            self.batches.append(len(items))
            return self._run(items, names, arrays)

        fusecomm._engine.submit, fusecomm._engine.synchronize = submit, sync
        _batch.run_numpy = run
        return self

    def __exit__(self, *exc):
        fusecomm._engine.submit, fusecomm._engine.synchronize, _batch.run_numpy = (
            self._submit, self._sync, self._run)


def data(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(GLOBAL_BATCH * STEPS, 3)).astype(np.int64)
    feats = rng.normal(size=(GLOBAL_BATCH * STEPS, DIM)).astype(np.float32)
    y = rng.normal(size=(GLOBAL_BATCH * STEPS, OUT)).astype(np.float32)
    return ids, feats, y


def shard(array, n, r, steps=STEPS):
    """This rank's part of every global batch, in step order."""
    local = GLOBAL_BATCH // n
    rows = [np.arange(s * GLOBAL_BATCH + r * local, s * GLOBAL_BATCH + (r + 1) * local)
            for s in range(steps)]
    return array[np.concatenate(rows)]


# --- DistributedGradientTape on a hand-written model with an embedding (sparse gradients) ------


def init_params():
    rng = np.random.default_rng(42)
    return [rng.normal(size=(VOCAB, DIM)).astype(np.float32) * 0.5,
            rng.normal(size=(DIM, OUT)).astype(np.float32) * 0.5, np.zeros(OUT, np.float32)]


def loss_fn(params, ids, feats, y):
    emb, w, b = params
    h = tf.reduce_mean(tf.gather(emb, ids), axis=1) + feats  # gather: IndexedSlices gradient
    return tf.reduce_mean(tf.square(tf.tanh(tf.matmul(h, w) + b) - y))


def sgd_step(params, grads, lr):
    for p, g in zip(params, grads):
        p.assign_sub(lr * tf.convert_to_tensor(g))


def train_tape(n, r, ids, feats, y, lr, compiled, wrap, distributed=True):
    params = [tf.Variable(p) for p in init_params()]
    local = GLOBAL_BATCH // n if distributed else GLOBAL_BATCH

    def step(i, f, t):
        with tf.GradientTape() as tape:
            loss = loss_fn(params, i, f, t)
        if distributed:
            tape = wrap(tape)
        sgd_step(params, tape.gradient(loss, params), lr)

    step = tf.function(step) if compiled else step
    for s in range(STEPS):
        rows = slice(s * local, (s + 1) * local)
        step(tf.constant(ids[rows]), tf.constant(feats[rows]), tf.constant(y[rows]))
    return [p.numpy() for p in params], step


def check_gradient_tape(n, r):
    ids, feats, y = data()
    local_data = [shard(a, n, r) for a in (ids, feats, y)]
    lr = 0.5
    reference, _ = train_tape(n, r, ids, feats, y, lr, True, None, distributed=False)
    variants = [
        ("default, tf.function", True, lambda t: hvd.DistributedGradientTape(t), lr, 2e-6),
        ("sparse_as_dense, eager", False,
         lambda t: hvd.DistributedGradientTape(t, sparse_as_dense=True), lr, 2e-6),
        ("predivide + groups, tf.function", True,
         lambda t: hvd.DistributedGradientTape(t, gradient_predivide_factor=2.0, groups=2), lr,
         2e-6),
        ("op=Sum at lr/n", True, lambda t: hvd.DistributedGradientTape(t, op=hvd.Sum), lr / n,
         2e-6),
        ("fp16 wire", True,
         lambda t: hvd.DistributedGradientTape(t, compression=hvd.Compression.fp16), lr, 3e-3),
    ]
    # What the comparison must be able to tell apart: no reduction at all (this rank's shard
    # alone), and gradients summed instead of averaged (plain SGD: the reference at n times
    # the rate).
    wrong = [("no reduction", train_tape(n, r, *local_data, lr, True, lambda t: t)[0]),
             ("Sum instead of Average",
              train_tape(n, r, ids, feats, y, lr * n, True, None, distributed=False)[0])]
    for what, compiled, wrap, rate, rtol in variants:
        with BatchLog() as log:
            got, step = train_tape(n, r, *local_data, rate, compiled, wrap)
        assert_params_match(got, reference, f"DistributedGradientTape {what}", rtol,
                            wrong if rtol < 1e-4 else ())
        same_on_all_ranks(got, f"DistributedGradientTape {what}")
        # One batch per step, with the embedding's values and indices and two dense gradients.
        want_items = 3 if "sparse_as_dense" in what else 4
        assert log.batches == [want_items] * STEPS, (what, log.batches)
        # Submit every gradient, then wait: never one blocking call per variable.
        per_step = log.events[:2 * want_items]
        assert per_step == ["submit"] * want_items + ["wait"] * want_items, (what, per_step)
    # The compiled step has exactly one numpy_function for all gradients.
    _, step = train_tape(n, r, *local_data, lr, True, lambda t: hvd.DistributedGradientTape(t))
    local = GLOBAL_BATCH // n
    concrete = step.get_concrete_function(tf.TensorSpec([local, 3], tf.int64),
                                          tf.TensorSpec([local, DIM], tf.float32),
                                          tf.TensorSpec([local, OUT], tf.float32))
    py_funcs = [op for op in concrete.graph.get_operations() if op.type == "PyFunc"]
    assert len(py_funcs) == 1, [op.name for op in py_funcs]


# --- Keras 3: model.fit with DistributedOptimizer and the callbacks -----------------------------


def dense_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(OUT)])


class Recorder(keras.callbacks.Callback):
    """Keeps every batch's learning rate and a copy of each epoch's logs as they arrive."""

    def __init__(self):
        super().__init__()
        self.lrs, self.logs = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(self.model.optimizer.learning_rate.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))


def check_fit(n, r):
    _, feats, y = data(1)
    epochs, base_lr, warmup = 3, 0.2, 2
    # Different initial weights on every rank: the broadcast callback must fix that.
    model = dense_model(seed=100 + r)
    root_init = [hvd.broadcast(w, 0).numpy() for w in model.get_weights()]
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(base_lr, momentum=0.9))
    model.compile(optimizer=opt, loss="mse")
    local_log, averaged_log = Recorder(), Recorder()
    with BatchLog() as log:
        model.fit(shard(feats, n, r), shard(y, n, r), batch_size=GLOBAL_BATCH // n, epochs=epochs,
                  shuffle=False, verbose=0,
                  callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0),
                             hvd_keras.callbacks.LearningRateWarmupCallback(
                                 base_lr, warmup_epochs=warmup),
                             local_log, hvd_keras.callbacks.MetricAverageCallback(),
                             averaged_log])
    # Reference: one process, whole batches, same initial weights and the same schedule.
    ref = dense_model(seed=0)
    ref.set_weights(root_init)
    ref.compile(optimizer=keras.optimizers.SGD(base_lr, momentum=0.9), loss="mse")
    ref.fit(feats, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, verbose=0,
            callbacks=[hvd_keras.callbacks.LearningRateWarmupCallback(base_lr,
                                                                      warmup_epochs=warmup)])
    assert_params_match(model.get_weights(), ref.get_weights(), "model.fit vs single process",
                        1e-5, fit_wrong_answers(n, r, feats, y, root_init, epochs, base_lr,
                                                warmup))
    same_on_all_ranks(model.get_weights(), "model.fit weights")
    same_on_all_ranks([v.numpy() for v in opt.variables], "optimizer variables")
    # Weights: broadcast (1 batch of model + optimizer variables), then one batch per step.
    steps = epochs * STEPS
    n_vars = len(model.weights) + len(opt.variables)
    assert log.batches[0] == n_vars, log.batches[:2]
    assert log.batches[1:] == [len(model.trainable_weights)] * steps, log.batches
    # Warm-up: lr / n * ((epoch + (batch + 1) / steps) * (n - 1) / warmup + 1), then base_lr.
    want_lrs = []
    for epoch in range(epochs):
        for batch in range(STEPS):
            e = min(epoch + (batch + 1) / STEPS, warmup) if epoch < warmup else warmup
            want_lrs.append(base_lr / n * (e * (n - 1) / warmup + 1))
    assert_close(np.array(local_log.lrs), np.array(want_lrs), "warm-up schedule", rtol=1e-6)
    # Logs averaged over ranks, for the callbacks after MetricAverageCallback.
    for local, averaged in zip(local_log.logs, averaged_log.logs):
        everyone = fusecomm.allgather(np.array([local["loss"]]))
        assert_close(averaged["loss"], everyone.mean(), "averaged loss", rtol=1e-12)
    same_on_all_ranks([[lg["loss"] for lg in averaged_log.logs]], "averaged logs")


def fit_wrong_answers(n, r, feats, y, init, epochs, base_lr, warmup):
    """What check_fit's model would train to with no reduction (this rank's shard alone) and
    with gradients summed instead of averaged (SGD: the whole batch at n times the rate)."""
    wrong = []
    for bug, x, t, batch, lr in [("no reduction", shard(feats, n, r), shard(y, n, r),
                                  GLOBAL_BATCH // n, base_lr),
                                 ("Sum instead of Average", feats, y, GLOBAL_BATCH, base_lr * n)]:
        model = dense_model(seed=0)
        model.set_weights(init)
        model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
        model.fit(x, t, batch_size=batch, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=[hvd_keras.callbacks.LearningRateWarmupCallback(
                      lr, warmup_epochs=warmup)])
        wrong.append((bug, model.get_weights()))
    return wrong


def check_backward_passes(n, r):
    """backward_passes_per_step=2: sum two passes' averaged gradients, apply every second call;
    single process: Keras' own accumulation (which averages) at twice the rate."""
    _, feats, y = data(2)
    lr = 0.1
    model = dense_model(seed=7)
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(lr), backward_passes_per_step=2)
    model.compile(optimizer=opt, loss="mse")
    model.fit(shard(feats, n, r), shard(y, n, r), batch_size=GLOBAL_BATCH // n, epochs=2,
              shuffle=False, verbose=0,
              callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)])
    ref = dense_model(seed=7)
    ref.compile(optimizer=keras.optimizers.SGD(2 * lr, gradient_accumulation_steps=2), loss="mse")
    ref.fit(feats, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    assert_params_match(model.get_weights(), ref.get_weights(),
                        "backward_passes_per_step=2 vs single process", 1e-5)
    same_on_all_ranks(model.get_weights(), "backward_passes_per_step=2 weights")
    assert int(opt.iterations.numpy()) == 2 * STEPS  # every backward pass counts


def check_model_built_in_first_step(n, r):
    """No Input layer: the weights exist only after the first step, and still end identical."""
    _, feats, y = data(4)
    keras.utils.set_random_seed(200 + r)
    model = keras.Sequential([keras.layers.Dense(OUT)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)),
                  loss="mse")
    model.fit(shard(feats, n, r), shard(y, n, r), batch_size=GLOBAL_BATCH // n, shuffle=False,
              verbose=0, callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)])
    same_on_all_ranks(model.get_weights(), "model built in its first step")


def embedding_model():
    keras.utils.set_random_seed(3)
    ids = keras.Input((3,), dtype="int64")
    h = keras.ops.mean(keras.layers.Embedding(VOCAB, DIM)(ids), axis=1)
    return keras.Model(ids, keras.layers.Dense(OUT)(h))


def check_custom_loop(n, r):
    """apply_gradients / apply in a tf.function with sparse (embedding) gradients, average and
    Sum."""
    ids, _, y = data(3)
    local_ids, local_y = shard(ids, n, r), shard(y, n, r)
    lr = 0.3

    def train(model, opt, ids_, y_, batch, use_apply=False):
        if use_apply:  # apply(grads) alone needs the optimizer built on the variables
            opt.build(model.trainable_variables)

        @tf.function
        def step(i, t):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(i) - t))
            grads = tape.gradient(loss, model.trainable_variables)
            if use_apply:
                opt.apply(grads)
            else:
                opt.apply_gradients(zip(grads, model.trainable_variables))

        for s in range(STEPS):
            step(tf.constant(ids_[s * batch:(s + 1) * batch]),
                 tf.constant(y_[s * batch:(s + 1) * batch]))
        return model.get_weights()

    ref = train(embedding_model(), keras.optimizers.SGD(lr), ids, y, GLOBAL_BATCH)
    wrong = [("no reduction", train(embedding_model(), keras.optimizers.SGD(lr), local_ids,
                                    local_y, GLOBAL_BATCH // n)),
             ("Sum instead of Average",
              train(embedding_model(), keras.optimizers.SGD(lr * n), ids, y, GLOBAL_BATCH))]
    for what, opt, use_apply in (
            ("sparse", hvd_keras.DistributedOptimizer(keras.optimizers.SGD(lr)), False),
            ("sparse_as_dense, apply(grads)", hvd_keras.DistributedOptimizer(
                keras.optimizers.SGD(lr), sparse_as_dense=True), True),
            ("op=Sum at lr/n", hvd_keras.DistributedOptimizer(keras.optimizers.SGD(lr / n),
                                                              op=hvd.Sum), False)):
        got = train(embedding_model(), opt, local_ids, local_y, GLOBAL_BATCH // n, use_apply)
        assert_params_match(got, ref, f"custom loop {what}", 2e-6, wrong)
        same_on_all_ranks(got, f"custom loop {what}")


def run_checks(n, r):
    check_gradient_tape(n, r)
    check_fit(n, r)
    check_backward_passes(n, r)
    check_model_built_in_first_step(n, r)
    check_custom_loop(n, r)
    hvd.barrier()
    if r == 0:
        print(f"tf_training OK on {n} ranks", flush=True)


def main():
    hvd.init()
    run_checks(hvd.size(), hvd.rank())
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
