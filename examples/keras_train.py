"""Data-parallel Keras 3 training with fusecomm: a small network on scikit-learn's bundled digits
(8x8 images, 10 classes; no download).

    mpirun -np 4 python examples/keras_train.py [--epochs 20] [--batch-size 32]

Each rank trains on its own shard; DistributedOptimizer averages the gradients of every step,
BroadcastGlobalVariablesCallback starts every rank from rank 0's weights, MetricAverageCallback
reports metrics averaged over ranks, and LearningRateWarmupCallback ramps the learning rate
(scaled by the number of ranks, Goyal et al. 2017) up over the first epochs."""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fusecomm.tensorflow.keras as hvd  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of one rank")
    p.add_argument("--warmup-epochs", type=int, default=3)
    return p.parse_args()


def main():
    args = parse_args()
    hvd.init()
    # Ranks share the machine's cores.
    tf.config.threading.set_intra_op_parallelism_threads(
        max(1, (os.cpu_count() or 1) // hvd.local_size()))
    tf.config.threading.set_inter_op_parallelism_threads(2)
    keras.utils.set_random_seed(1234 + hvd.rank())  # different weights: the broadcast fixes that

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0,
                                                        stratify=y)
    # Equal shards, so every rank takes the same number of steps.
    per_rank = len(x_train) // hvd.size()
    shard = slice(hvd.rank() * per_rank, (hvd.rank() + 1) * per_rank)
    x_shard, y_shard = x_train[shard], y_train[shard]

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    scaled_lr = args.lr * hvd.size()
    optimizer = hvd.DistributedOptimizer(keras.optimizers.SGD(scaled_lr, momentum=0.9))
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        hvd.callbacks.LearningRateWarmupCallback(scaled_lr, warmup_epochs=args.warmup_epochs,
                                                 verbose=1),
    ]
    model.fit(x_shard, y_shard, batch_size=args.batch_size, epochs=args.epochs,
              callbacks=callbacks, verbose=2 if hvd.rank() == 0 else 0)

    # Every rank holds the same weights; each scores a slice of the test set and the
    # averages are combined, weighted by slice size.
    parts = np.array_split(np.arange(len(x_test)), hvd.size())[hvd.rank()]
    _, accuracy = model.evaluate(x_test[parts], y_test[parts], verbose=0)
    correct = hvd.allreduce(np.array([accuracy * len(parts), len(parts)]), op=hvd.Sum).numpy()
    if hvd.rank() == 0:
        print(f"test accuracy: {correct[0] / correct[1]:.4f} "
              f"({hvd.size()} ranks, {per_rank} training samples each)")
    hvd.shutdown()


if __name__ == "__main__":
    main()
