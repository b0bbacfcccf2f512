"""fusecomm.tensorflow.keras.callbacks.BatchSizeControlCallback on several ranks: model.fit on
the callback's dataset with DistributedOptimizer(SGD with momentum). At every optimizer step of
every rank, the global batch (the rows the model saw, summed over ranks) and the learning rate
are those written out by hand from the stages below (global batch N*2 -> N*4 -> N*8 at epochs 1
and 2, rate linear in the batch, warm-up over epoch 0), and the final weights equal a NumPy
momentum-SGD reference (torch's convention: buf = m buf + g; w -= lr buf) trained on the same
global batches in float64.

Run: mpirun -np N python tests/mp/keras_batch_control.py   (N = 2, 3)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_common import assert_close, same_on_all_ranks  # noqa: E402  (sets TF's threads first)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow.keras as hvd  # noqa: E402
from _util import run_main  # noqa: E402
from fusecomm.optim import BatchSizePlan  # noqa: E402

SEED = 4242
EPOCHS = 4
BASE_LR, MOMENTUM = 0.02, 0.9


class RowCounter(keras.layers.Layer):
    """Identity that remembers how many rows its last training call saw."""

    def build(self, input_shape):
        self.rows = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    dtype="float64", name="rows")

    def call(self, x, training=None):
        if training:
            self.rows.assign(ops.cast(ops.shape(x)[0], "float64"))
        return x


class Recorder(keras.callbacks.Callback):
    def __init__(self, counter):
        super().__init__()
        self.counter, self.seen, self.epoch = counter, [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        rows = fusecomm.allreduce(np.array([self.counter.rows.numpy()]), op=fusecomm.Sum)[0]
        self.seen.append((self.epoch, batch, int(rows),
                          float(self.model.optimizer.learning_rate.numpy())))


def expected_steps(n, data):
    """(epoch, step, global batch, lr) of every step, by hand from the stages: batch 2n, 4n, 8n
    from epochs 0, 1, 2; lr = BASE_LR * batch / n (base batch n); during epoch 0 the rate rises
    from BASE_LR to its stage's 2 * BASE_LR in proportion to the epoch's progress."""
    out = []
    for epoch in range(EPOCHS):
        batch = 2 * n if epoch == 0 else 4 * n if epoch == 1 else 8 * n
        steps = data // batch
        for step in range(steps):
            lr = BASE_LR * batch / n
            if epoch == 0:
                lr = BASE_LR + (lr - BASE_LR) * step / steps
            out.append((epoch, step, batch, lr))
    return out


def numpy_reference(x, y, w0, b0, control, n, schedule):
    """Linear model, mean squared error over the global batch, momentum SGD (torch's form)."""
    w, b = w0.astype(np.float64), b0.astype(np.float64)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for epoch, step, batch, lr in schedule:
        order = control.epoch_order(epoch)
        rows = order[step * batch:(step + 1) * batch]
        err = x[rows] @ w + b - y[rows]
        gw = 2.0 * x[rows].T @ err / err.size
        gb = 2.0 * err.sum(0) / err.size
        vw, vb = MOMENTUM * vw + gw, MOMENTUM * vb + gb
        lr = float(np.float32(lr))  # the rate Keras' float32 variable holds
        w, b = w - lr * vw, b - lr * vb
    return w, b


def main():
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    data = 24 * n + 5  # 5 samples left over in every epoch
    rng = np.random.default_rng([SEED, n])
    x = rng.standard_normal((data, 3))
    y = x @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((data, 2))
    plan = BatchSizePlan([(0, 2 * n), (1, 4 * n), (2, 8 * n)], ranks=n, base_lr=BASE_LR,
                         base_batch=n, warmup_epochs=1)
    control = hvd.callbacks.BatchSizeControlCallback(plan, seed=SEED)
    keras.utils.set_random_seed(SEED % 1000)
    counter = RowCounter(dtype="float64")
    dense = keras.layers.Dense(2, dtype="float64")
    model = keras.Sequential([keras.Input((3,), dtype="float64"), counter, dense])
    w0, b0 = (v.numpy() for v in dense.weights)
    opt = hvd.DistributedOptimizer(keras.optimizers.SGD(BASE_LR, momentum=MOMENTUM))
    model.compile(optimizer=opt, loss=keras.losses.MeanSquaredError(dtype="float64"))
    recorder = Recorder(counter)
    history = model.fit(control.dataset(x, y), epochs=EPOCHS, verbose=0,
                        callbacks=[control, recorder])
    schedule = expected_steps(n, data)
    what = f"{n} ranks, seed {SEED}"
    assert len(recorder.seen) == len(schedule), \
        f"{what}: {len(recorder.seen)} steps, expected {len(schedule)}: {recorder.seen}"
    for got, want in zip(recorder.seen, schedule):
        # Keras keeps the rate in a float32 variable.
        assert got[:3] == want[:3] and got[3] == float(np.float32(want[3])), \
            f"{what}: (epoch, step, global batch, lr) {got}, expected {want}"
    assert history.history["global_batch"] == [2 * n, 4 * n, 8 * n, 8 * n], history.history
    w, b = numpy_reference(x, y, w0, b0, control, n, schedule)
    # Keras' TensorFlow SGD rounds slightly differently from NumPy (~1e-8 per step); a wrong
    # batch, rate or momentum correction is off by orders of magnitude more.
    assert_close(dense.kernel.numpy(), w, f"{what}: kernel", rtol=2e-6)
    assert_close(dense.bias.numpy(), b, f"{what}: bias", rtol=2e-6)
    same_on_all_ranks(model.get_weights(), what)
    fusecomm.barrier()
    print(f"[rank {r}] keras_batch_control OK on {n} ranks", flush=True)


if __name__ == "__main__":
    run_main(main)
