"""fusecomm for Keras 3 on the TensorFlow backend: `import fusecomm.tensorflow.keras as hvd`.

DistributedOptimizer wraps any Keras 3 optimizer; it works with model.fit() and with custom
loops (apply_gradients / apply), eagerly or inside tf.function.
"""
import keras
import tensorflow as tf

from fusecomm._engine import Adasum, Average, Max, Min, Product, Sum  # noqa: F401
from fusecomm._frontend.optimizer_rules import check_backward_passes
from fusecomm.basics import (ProcessSet, add_process_set, ccl_built, cross_rank,  # noqa: F401
                             cross_size, cuda_built, ddl_built, global_process_set, gloo_built,
                             gloo_enabled, init, is_homogeneous, is_initialized, local_rank,
                             local_size, mpi_built, mpi_enabled, mpi_threads_supported,
                             nccl_built, rank, remove_process_set, rocm_built, shutdown, size,
                             start_timeline, stop_timeline)
from fusecomm.exceptions import CollectiveError, HorovodInternalError  # noqa: F401
from fusecomm.tensorflow import mpi_ops as _ops
from fusecomm.tensorflow.compression import Compression
from fusecomm.tensorflow.functions import (allgather_object, broadcast_object,  # noqa: F401
                                           broadcast_variables)
from fusecomm.tensorflow.gradient_tape import GradientReducer, check_groups
from fusecomm.tensorflow.keras import callbacks, layers  # noqa: F401
from fusecomm.tensorflow.keras.layers import SyncBatchNormalization  # noqa: F401


class _DistributedOptimizer:
    """Mixed in front of the wrapped optimizer's class: apply() (which apply_gradients() and
    model.fit's train step call) reduces the gradients across ranks before the update.

    With backward_passes_per_step = k > 1, gradients are summed locally in accumulator variables
    (optimizer variables, so they are broadcast and checkpointed like the rest) and only every
    k-th call reduces and applies them. `iterations` counts every call, as in Horovod and in
    Keras' own gradient_accumulation_steps, so learning-rate schedules see backward passes."""

    _fc_reducer = None  # set by DistributedOptimizer(); None in a copy made by from_config()
    _fc_passes = 1

    def _fc_setup(self, reducer, backward_passes_per_step, average_aggregated_gradients):
        self._fc_reducer = reducer
        self._fc_passes = backward_passes_per_step
        self._fc_average_aggregated = average_aggregated_gradients
        self._fc_accumulators = None

    def build(self, variables):
        super().build(variables)
        if self._fc_passes > 1:
            # Plain tuple outside Keras' attribute tracking: add_variable_* tracks them already.
            object.__setattr__(self, "_fc_accumulators", tuple(
                self.add_variable_from_reference(v, name="fusecomm_accumulator")
                for v in variables))

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        if not grads:
            return super().apply(grads, trainable_variables)
        if self._fc_reducer is None:
            raise RuntimeError("this optimizer was rebuilt from its config without fusecomm's "
                               "settings; wrap the plain optimizer with DistributedOptimizer()")
        if self._fc_passes == 1:
            variables = trainable_variables if trainable_variables is not None else (
                self._trainable_variables if self.built else None)
            return super().apply(self._fc_reducer(grads, variables), trainable_variables)
        return self._fc_accumulate_and_apply(grads, trainable_variables)

    def _fc_accumulate_and_apply(self, grads, trainable_variables):
        if not self.built:
            if trainable_variables is None:
                raise ValueError("call optimizer.build(variables) or pass the variables with "
                                 "the first gradients")
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        variables = trainable_variables if trainable_variables is not None else \
            self._trainable_variables
        accumulators = [self._fc_accumulators[self._get_variable_index(v)] for v in variables]
        # Accumulation needs a dense sum, so sparse gradients are densified here.
        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        base_apply = super().apply  # zero-argument super() is unavailable in the closures below
        passes = self._fc_passes

        def communicate_and_apply():
            totals = [None if g is None else g + tf.cast(acc.value, g.dtype)
                      for g, acc in zip(grads, accumulators)]
            reduced = self._fc_reducer(totals, variables)
            if self._fc_average_aggregated:
                reduced = [None if g is None else g / tf.cast(passes, g.dtype) for g in reduced]
            base_apply(reduced, trainable_variables)  # counts this call in iterations
            for acc in accumulators:
                acc.assign(tf.zeros_like(acc.value))

        def accumulate():
            for g, acc in zip(grads, accumulators):
                if g is not None:
                    acc.assign_add(tf.cast(g, acc.dtype))
            self._iterations.assign_add(1)

        is_last_pass = tf.equal((self._iterations + 1) % passes, 0)
        tf.cond(is_last_pass, communicate_and_apply, accumulate)


_classes = {}


def _distributed_class(base):
    # One class per wrapped class, named like it (and living in its module) so that a saved
    # model restores as the plain optimizer without fusecomm, as Horovod intended.
    if base not in _classes:
        _classes[base] = type(base.__name__, (_DistributedOptimizer, base),
                              {"__module__": base.__module__, "__qualname__": base.__qualname__})
    return _classes[base]


def DistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="",
                         compression=Compression.none, sparse_as_dense=False,
                         gradient_predivide_factor=1.0, op=Average, backward_passes_per_step=1,
                         average_aggregated_gradients=False, groups=None,
                         process_set=global_process_set):
    """Returns a copy of `optimizer` (a Keras 3 optimizer, same class and configuration) whose
    updates use gradients combined across the process set (default: averaged).

    Wrap it before training: like Horovod, the copy is made from the optimizer's config, so an
    optimizer that has already taken steps starts afresh.

    name: the new optimizer's name (default "Distributed" + class name).
    compression, sparse_as_dense, op, gradient_predivide_factor, groups, process_set,
    device_dense, device_sparse: as for DistributedGradientTape.
    backward_passes_per_step: accumulate this many calls locally, then reduce and apply once.
    average_aggregated_gradients: divide the accumulated gradients by backward_passes_per_step.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"DistributedOptimizer wraps a Keras 3 optimizer "
                        f"(keras.optimizers.Optimizer), not {type(optimizer).__name__}")
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("this optimizer is already a DistributedOptimizer")
    backward_passes_per_step = check_backward_passes(backward_passes_per_step)
    if backward_passes_per_step > 1 and getattr(optimizer, "gradient_accumulation_steps", None):
        raise ValueError("use either backward_passes_per_step or the optimizer's "
                         "gradient_accumulation_steps, not both")
    reducer = GradientReducer(name or f"Distributed{type(optimizer).__name__}", compression,
                              sparse_as_dense, op, gradient_predivide_factor, check_groups(groups),
                              process_set, device_dense, device_sparse)
    config = optimizer.get_config()
    config["name"] = name or f"Distributed{type(optimizer).__name__}"
    distributed = _distributed_class(type(optimizer)).from_config(config)
    distributed._fc_setup(reducer, backward_passes_per_step, bool(average_aggregated_gradients))
    return distributed


def _distributed_factory(optimizer_class, compression):
    """What Keras' deserialization takes for `optimizer_class` (it calls from_config): the
    optimizer rebuilt from its saved config and wrapped in DistributedOptimizer. Keras then
    restores the saved optimizer variables (iterations, slots) into the wrapped one."""

    def from_config(cls, config, custom_objects=None):
        del cls, custom_objects
        return DistributedOptimizer(optimizer_class.from_config(config), compression=compression)

    return type(optimizer_class.__name__, (), {"from_config": classmethod(from_config)})


def _keras_optimizer_classes():
    # LossScaleOptimizer is left out: it wraps another optimizer that its config names.
    return [cls for cls in vars(keras.optimizers).values()
            if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)
            and cls not in (keras.optimizers.Optimizer, keras.optimizers.LossScaleOptimizer)]


def load_model(filepath, custom_optimizers=None, custom_objects=None,
               compression=Compression.none, legacy_opts=False):
    """Horovod's hvd.load_model: keras.models.load_model whose optimizer comes back wrapped in
    DistributedOptimizer, with its saved state, so a resumed job still averages gradients.

    custom_optimizers: optimizer classes of your own (keras.optimizers.Optimizer subclasses)
        to wrap too; Keras' own are always wrapped.
    custom_objects: passed to Keras (they win over the wrapped optimizers of the same name).
    compression: the DistributedOptimizer's compression.
    legacy_opts: accepted for Horovod scripts (Keras 3 has no legacy optimizers)."""
    del legacy_opts
    objects = {cls.__name__: _distributed_factory(cls, compression)
               for cls in _keras_optimizer_classes() + list(custom_optimizers or [])}
    objects.update(custom_objects or {})
    return keras.models.load_model(filepath, custom_objects=objects)


# Horovod's hvd.keras collectives take any tensor-like value and return a tensor.
def allreduce(value, name=None, average=None, prescale_factor=1.0, postscale_factor=1.0, op=None,
              compression=Compression.none, process_set=global_process_set):
    return _ops.allreduce(tf.convert_to_tensor(value), average=average, compression=compression,
                          op=op, prescale_factor=prescale_factor,
                          postscale_factor=postscale_factor, name=name, process_set=process_set)


def allgather(value, name=None, process_set=global_process_set):
    return _ops.allgather(tf.convert_to_tensor(value), name=name, process_set=process_set)


def broadcast(value, root_rank, name=None, process_set=global_process_set):
    return _ops.broadcast(tf.convert_to_tensor(value), root_rank, name=name,
                          process_set=process_set)


def reducescatter(value, name=None, op=Average, process_set=global_process_set):
    return _ops.reducescatter(tf.convert_to_tensor(value), op=op, name=name,
                              process_set=process_set)
