"""fusecomm for TensorFlow 2 (tested with 2.21 and Keras 3): `import fusecomm.tensorflow as hvd`.

Collectives take tf.Tensor / tf.Variable / tf.IndexedSlices and work eagerly and inside
tf.function (as one tf.numpy_function per batch; not under XLA). Nothing here is compiled
against TensorFlow: tensors reach the C++ engine as NumPy arrays.
"""
from fusecomm._engine import Adasum, Average, Max, Min, Product, Sum
from fusecomm.basics import (ProcessSet, add_process_set, ccl_built, cross_rank, cross_size,
                             cuda_built, ddl_built, global_process_set, gloo_built, gloo_enabled,
                             init, is_homogeneous, is_initialized, local_rank, local_size,
                             mpi_built, mpi_enabled, mpi_threads_supported, nccl_built, rank,
                             remove_process_set, rocm_built, shutdown, size, start_timeline,
                             stop_timeline)
from fusecomm.exceptions import CollectiveError, HorovodInternalError, NotInitializedError
from fusecomm.tensorflow.compression import Compression
from fusecomm.tensorflow.functions import (BroadcastGlobalVariablesHook, allgather_object,
                                           broadcast_global_variables, broadcast_object,
                                           broadcast_variables)
from fusecomm.tensorflow.gradient_tape import (DistributedGradientTape,
                                               PartialDistributedGradientTape)
from fusecomm.tensorflow.mpi_ops import (allgather, allreduce, alltoall, barrier, broadcast,
                                         broadcast_, grouped_allgather, grouped_allreduce,
                                         grouped_reducescatter, join, local_rank_op,
                                         local_size_op, process_set_included_op, rank_op,
                                         reducescatter, size_op)


def DistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="",
                         compression=Compression.none, sparse_as_dense=False,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0,
                         average_aggregated_gradients=False, num_groups=0, groups=None,
                         process_set=global_process_set):
    """Horovod's entry point for TF optimizers. TF 2.16+ has no legacy optimizers, so this is
    fusecomm.tensorflow.keras.DistributedOptimizer for a Keras 3 optimizer."""
    from fusecomm.tensorflow import keras as _keras
    from fusecomm.tensorflow.gradient_tape import check_groups

    return _keras.DistributedOptimizer(
        optimizer, name=name, device_dense=device_dense, device_sparse=device_sparse,
        compression=compression, sparse_as_dense=sparse_as_dense,
        gradient_predivide_factor=gradient_predivide_factor, op=op,
        backward_passes_per_step=backward_passes_per_step,
        average_aggregated_gradients=average_aggregated_gradients,
        groups=check_groups(groups, num_groups), process_set=process_set)


def __getattr__(name):
    # Horovod's hvd.SyncBatchNormalization, loaded on first use: it imports Keras.
    if name == "SyncBatchNormalization":
        from fusecomm.tensorflow.keras.layers import SyncBatchNormalization
        return SyncBatchNormalization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
