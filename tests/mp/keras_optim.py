"""fusecomm.tensorflow.keras.optim on several ranks: LARS, LAMB and RMSpropWarmup wrapped in
DistributedOptimizer, trained by model.fit on each rank's shard, against one process fitting
the whole batch (the optimizers themselves are checked against the papers' formulas in
tests/test_optim_keras.py), with identical weights on every rank; and DistributedOptimizer(
op=Adasum) against the pairwise formula on the ranks' gradients.

Run: mpirun -np N python tests/mp/keras_optim.py   (N = 2)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_common import assert_close, same_on_all_ranks  # noqa: E402  (sets TF's threads first)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow.keras as hvd  # noqa: E402
from _util import run_main  # noqa: E402
from adasum_reference import adasum_tree  # noqa: E402
from fusecomm.tensorflow.keras import optim as kopt  # noqa: E402

SHARD, STEPS = 8, 4


def model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(3)])


def check_adasum_gradients(x, y, r, n):
    """DistributedOptimizer(op=Adasum) combines the ranks' gradients with Adasum (Horovod's
    Keras): one SGD step against the pairwise formula applied to every rank's gradient."""
    import tensorflow as tf

    def grads_of(m, rows):
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y[rows], m(x[rows]))
        return tape.gradient(loss, m.trainable_variables)

    dist = model()
    opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.5), op=hvd.Adasum)
    opt.apply(grads_of(dist, slice(r * SHARD, (r + 1) * SHARD)), dist.trainable_variables)
    ref = model()
    per_rank = [grads_of(ref, slice(q * SHARD, (q + 1) * SHARD)) for q in range(n)]
    for i, v in enumerate(ref.trainable_variables):
        flat = [np.asarray(g[i], np.float64).ravel() for g in per_rank]
        want = np.asarray(v, np.float64) - 0.5 * adasum_tree(flat).reshape(v.shape)
        assert_close(dist.trainable_variables[i].numpy(), want, f"Adasum gradients var {i}",
                     rtol=2e-5)


def main():
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((SHARD * n * STEPS, 6)).astype(np.float32)
    y = rng.standard_normal((SHARD * n * STEPS, 3)).astype(np.float32)
    # Rank r takes rows r*SHARD.. of every global batch, so fit's batches are its shards.
    mine = np.concatenate([np.arange(s * SHARD * n + r * SHARD, s * SHARD * n + (r + 1) * SHARD)
                           for s in range(STEPS)])
    cases = {"LARS": lambda: kopt.LARS(0.5, momentum=0.9, weight_decay_rate=1e-3, eta=0.01),
             "LAMB": lambda: kopt.LAMB(kopt.WarmupDecay(0.02, 2, 10), weight_decay_rate=0.01),
             "RMSpropWarmup": lambda: kopt.RMSpropWarmup(0.01, steps_per_epoch=2, center=1.0,
                                                         period=2.0)}
    for label, make in cases.items():
        dist = model()
        dist.compile(optimizer=hvd.DistributedOptimizer(make()), loss="mse")
        dist.fit(x[mine], y[mine], batch_size=SHARD, epochs=1, shuffle=False, verbose=0)
        ref = model()
        ref.compile(optimizer=make(), loss="mse")
        ref.fit(x, y, batch_size=SHARD * n, epochs=1, shuffle=False, verbose=0)
        for i, (got, want) in enumerate(zip(dist.get_weights(), ref.get_weights())):
            assert_close(got, want, f"{label} weight {i}", rtol=2e-5)
        same_on_all_ranks(dist.get_weights(), label)
    check_adasum_gradients(x, y, r, n)
    fusecomm.barrier()
    print(f"[rank {r}] keras_optim OK on {n} ranks", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
