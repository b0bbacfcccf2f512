"""fusecomm.tensorflow.keras.layers.SyncBatchNormalization on several ranks whose batches have
different sizes (rank r holds 2 + 3r samples; at 3+ ranks rank 1 none): outputs, gradients
(inputs, gamma, beta) and moving statistics against one process running
keras.layers.BatchNormalization on the concatenated global batch, eagerly and inside
tf.function, channels last and channels first, and with a mask over time steps; then
moving_averages=False (Akiba et al.) against NumPy: the stored statistics are the last
global batch's mean and biased variance, and inference normalizes with them.

Run: mpirun -np N python tests/mp/keras_sync_batch_norm.py   (N = 2, 3)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_common import assert_close, same_on_all_ranks  # noqa: E402  (sets TF's threads first)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow as hvd_tf  # noqa: E402
import fusecomm.tensorflow.keras as hvd  # noqa: E402
from _util import run_main  # noqa: E402

SEED = 20261130
CHANNELS = 4
RTOL = 2e-5


def rows_of(q, n):
    return 0 if (q == 1 and n >= 3) else 2 + 3 * q  # at 3+ ranks, rank 1 has no samples


def global_batch(n, step, shape_tail):
    """Every rank's samples (rank q's are rows offsets[q]:offsets[q+1]) and the upstream
    gradient, the same on every rank."""
    rng = np.random.default_rng([SEED, n, step, len(shape_tail)])
    total = sum(rows_of(q, n) for q in range(n))
    x = (rng.standard_normal((total,) + shape_tail) * 3 + 2).astype(np.float32)
    up = rng.standard_normal(x.shape).astype(np.float32)
    offsets = np.cumsum([0] + [rows_of(q, n) for q in range(n)])
    return x, up, offsets


def make_pair(axis, input_shape, **kwargs):
    """The synchronized layer and the single-process reference, with the same random gamma and
    beta."""
    sync = hvd.layers.SyncBatchNormalization(axis=axis, momentum=0.7, **kwargs)
    ref = keras.layers.BatchNormalization(axis=axis, momentum=0.7)
    sync.build(input_shape)
    ref.build(input_shape)
    rng = np.random.default_rng([SEED, 99])
    weights = [rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32),
               rng.uniform(-1, 1, CHANNELS).astype(np.float32),
               np.zeros(CHANNELS, np.float32), np.ones(CHANNELS, np.float32)]
    sync.set_weights(weights)
    ref.set_weights(weights)
    return sync, ref


def forward_backward(layer, x, up, mask=None):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True, mask=mask)
        loss = tf.reduce_sum(y * up)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y, dx, dgamma, dbeta


def sample_mask(x, s):
    """A (rows, steps) mask over a (rows, steps, channels) batch, a third of it off."""
    rng = np.random.default_rng([SEED, s, 7])
    return rng.uniform(size=x.shape[:2]) > 0.33


def check_against_single_process(r, n, axis, shape_tail, graph, masked=False):
    what = f"axis={axis} tail={shape_tail} graph={graph} masked={masked} seed={SEED}"
    input_shape = (None,) + shape_tail
    sync, ref = make_pair(axis, input_shape)
    step = tf.function(forward_backward) if graph else forward_backward
    for s in range(3):  # moving statistics accumulate over steps
        x, up, off = global_batch(n, s, shape_tail)
        mine = slice(off[r], off[r + 1])
        mask = sample_mask(x, s) if masked else None
        y, dx, dgamma, dbeta = step(sync, x[mine], up[mine],
                                    None if mask is None else mask[mine])
        y_ref, dx_ref, dgamma_ref, dbeta_ref = forward_backward(ref, x, up, mask)
        assert_close(y.numpy(), y_ref.numpy()[mine], f"{what} step {s}: output", rtol=RTOL)
        assert_close(dx.numpy(), dx_ref.numpy()[mine], f"{what} step {s}: input gradient",
                     rtol=RTOL)
        # gamma and beta: each rank's part; their sum is the global batch's gradient.
        summed = fusecomm.allreduce(np.stack([dgamma.numpy(), dbeta.numpy()]), op=fusecomm.Sum)
        assert_close(summed[0], dgamma_ref.numpy(), f"{what} step {s}: gamma gradient",
                     rtol=RTOL)
        assert_close(summed[1], dbeta_ref.numpy(), f"{what} step {s}: beta gradient",
                     rtol=RTOL)
        assert_close(sync.moving_mean.numpy(), ref.moving_mean.numpy(),
                     f"{what} step {s}: moving mean", rtol=RTOL)
        assert_close(sync.moving_variance.numpy(), ref.moving_variance.numpy(),
                     f"{what} step {s}: moving variance", rtol=RTOL)
    same_on_all_ranks([sync.moving_mean.numpy(), sync.moving_variance.numpy()],
                      f"{what}: moving statistics")
    x, _, off = global_batch(n, 7, shape_tail)
    assert_close(sync(x[off[r]:off[r + 1]], training=False).numpy(),
                 ref(x, training=False).numpy()[off[r]:off[r + 1]], f"{what}: inference",
                 rtol=RTOL)


def check_without_moving_averages(r, n):
    """Akiba et al.: the statistics kept for inference are those of the last training batch
    over every rank, not running averages."""
    shape_tail = (3, CHANNELS)
    sync, _ = make_pair(-1, (None,) + shape_tail, moving_averages=False)
    assert sync.momentum == 0.0
    for s in range(3):
        x, up, off = global_batch(n, 10 + s, shape_tail)
        y_train, _, _, _ = forward_backward(sync, x[off[r]:off[r + 1]], up[off[r]:off[r + 1]])
    flat = x.astype(np.float64).reshape(-1, CHANNELS)  # the last global batch
    mean, var = flat.mean(0), flat.var(0)
    what = f"moving_averages=False on {n} ranks, seed={SEED}"
    assert_close(sync.moving_mean.numpy(), mean, f"{what}: stored mean", rtol=RTOL)
    assert_close(sync.moving_variance.numpy(), var, f"{what}: stored variance", rtol=RTOL)
    gamma, beta = (v.numpy().astype(np.float64) for v in (sync.gamma, sync.beta))
    probe, _, off = global_batch(n, 20, shape_tail)
    mine = probe[off[r]:off[r + 1]]
    want = (mine - mean) / np.sqrt(var + sync.epsilon) * gamma + beta
    assert_close(sync(mine, training=False).numpy(), want, f"{what}: inference", rtol=RTOL)
    # Inference on the last training batch reproduces its training output.
    assert_close(sync(x[off[r]:off[r + 1]], training=False).numpy(), y_train.numpy(),
                 f"{what}: inference on the last batch", rtol=RTOL)
    config = sync.get_config()
    assert config["moving_averages"] is False, config
    assert hvd.layers.SyncBatchNormalization.from_config(config).momentum == 0.0


def check_fit(r, n):
    """In a compiled model.fit with DistributedOptimizer, every rank ends with the same model."""
    keras.utils.set_random_seed(SEED % 1000)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6),
                              hvd.SyncBatchNormalization(), keras.layers.Dense(1)])
    model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.05)), loss="mse")
    rng = np.random.default_rng([SEED, r])
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = rng.standard_normal((24, 1)).astype(np.float32)
    model.fit(x, y, batch_size=6, epochs=2, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    same_on_all_ranks(model.get_weights(), f"fit with SyncBatchNormalization, seed={SEED}")


def main():
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    assert hvd_tf.SyncBatchNormalization is hvd.SyncBatchNormalization
    for axis, tail in ((-1, (CHANNELS,)), (-1, (3, CHANNELS)), (1, (CHANNELS, 3))):
        for graph in (False, True):
            check_against_single_process(r, n, axis, tail, graph)
    check_against_single_process(r, n, -1, (3, CHANNELS), False, masked=True)
    check_without_moving_averages(r, n)
    check_fit(r, n)
    fusecomm.barrier()
    print(f"[rank {r}] keras_sync_batch_norm OK on {n} ranks", flush=True)


if __name__ == "__main__":
    run_main(main)
