"""Keras 3 layers of fusecomm: SyncBatchNormalization (Horovod's
horovod.tensorflow.SyncBatchNormalization, also importable from fusecomm.tensorflow and
fusecomm.tensorflow.sync_batch_norm)."""
import keras
import tensorflow as tf

from fusecomm._engine import Sum
from fusecomm.basics import global_process_set
from fusecomm.tensorflow import mpi_ops


@keras.saving.register_keras_serializable(package="fusecomm")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training statistics are those of the global batch:
    every rank's per-channel sample count, sum and sum of squares are all-reduced (one
    collective per layer and step), so ranks may hold different numbers of samples (none
    included) and the mean and variance are the ones a single process would compute on the
    concatenated batch. The all-reduce is differentiable, so gradients with respect to the
    inputs are those of the global batch too; gamma and beta get this rank's part, which
    DistributedOptimizer combines like any other gradient. Inference uses the stored
    statistics, locally. Horovod averages the ranks' moments with equal weights, which is
    exact only when every rank has the same batch size.

    Arguments are BatchNormalization's, plus:
    moving_averages: False for Akiba et al.'s batch normalization without moving averages:
        moving_mean and moving_variance are replaced at every training step by the global
        batch's mean and (biased) variance, so inference uses the statistics of the last
        training batch over all ranks (momentum is then 0 and the given one is ignored).
    process_set: the ranks whose batches are combined (not saved in the config: a loaded
        layer uses the global set).
    fused: Horovod's argument; only False is supported, as in Horovod.

    Every rank of the set must call the layer in training mode at the same steps (the
    statistics are a collective). Keras' own `synchronized=True` (tf.distribute) is refused."""

    def __init__(self, fused=False, moving_averages=True, process_set=global_process_set,
                 **kwargs):
        if fused in (True, None):
            raise ValueError("SyncBatchNormalization does not support fused=True.")
        if kwargs.get("synchronized"):
            raise ValueError("SyncBatchNormalization synchronizes through fusecomm; Keras' "
                             "synchronized=True (tf.distribute) cannot be combined with it")
        super().__init__(**kwargs)
        self.moving_averages = bool(moving_averages)
        if not self.moving_averages:
            # BatchNormalization's update, moving * momentum + batch * (1 - momentum), then
            # stores the batch's statistics themselves.
            self.momentum = 0.0
        self.process_set = process_set

    def _moments(self, inputs, mask):
        if self.process_set.size() == 1:
            return super()._moments(inputs, mask)
        # Sums in float64: the variance comes from E[x^2] - E[x]^2 over the global batch.
        x = tf.cast(inputs, tf.float64)
        channels = inputs.shape[self.axis]
        if mask is None:
            count = tf.cast(tf.size(x), tf.float64) / channels * tf.ones([channels], tf.float64)
        else:
            weights = tf.broadcast_to(tf.cast(tf.expand_dims(mask, -1), tf.float64), tf.shape(x))
            x = x * weights
            count = tf.reduce_sum(weights, self._reduction_axes)
        local = tf.stack([count, tf.reduce_sum(x, self._reduction_axes),
                          tf.reduce_sum(tf.square(x), self._reduction_axes)])
        total = mpi_ops.allreduce(local, op=Sum, process_set=self.process_set)
        samples = tf.maximum(total[0], 1.0)  # a set without samples normalizes nothing
        mean = total[1] / samples
        variance = tf.maximum(total[2] / samples - tf.square(mean), 0.0)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"moving_averages": self.moving_averages})
        return config
