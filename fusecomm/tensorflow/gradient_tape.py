"""Gradient averaging shared by DistributedGradientTape and the Keras DistributedOptimizer."""
import zlib

import tensorflow as tf

from fusecomm._engine import Average
from fusecomm._frontend import optimizer_rules as rules
from fusecomm._frontend.validate import resolve_op
from fusecomm.basics import global_process_set, process_set_id
from fusecomm.tensorflow.compression import Compression
from fusecomm.tensorflow.mpi_ops import reduce_group


def check_groups(groups, num_groups=0):
    """Horovod's rules for `groups` (fusecomm/_frontend/optimizer_rules.py), for variables."""
    return rules.check_groups(groups, num_groups, key=lambda v: id(_unwrap(v)),
                              kind="variables")


class GradientReducer:
    """Averages (or sums, ...) a step's gradients across the process set as ONE batch.

    Called with the gradient list (None entries allowed) and the matching variables; returns the
    reduced list in the same order."""

    def __init__(self, prefix, compression=Compression.none, sparse_as_dense=False, op=Average,
                 gradient_predivide_factor=1.0, groups=None, process_set=global_process_set,
                 device_dense="", device_sparse=""):
        op = resolve_op(op)
        predivide = rules.check_predivide(gradient_predivide_factor, op)
        process_set_id(process_set)
        self.prefix = prefix
        self.compression = compression
        self.sparse_as_dense = bool(sparse_as_dense)
        self.op = op
        self.prescale, self.postscale = rules.reduction_scales(op, predivide)
        self.groups = check_groups(groups)
        self.process_set = process_set
        self.device_dense, self.device_sparse = device_dense, device_sparse

    def _order(self, grads, variables):
        """Submission order: members of each explicit group next to each other, so the engine's
        fusion packs a group together; the others after, in their own order."""
        if variables is None:
            return list(range(len(grads)))
        position = {id(_unwrap(v)): i for i, v in enumerate(variables)}
        return rules.submission_order(len(grads), self.groups,
                                      lambda v: position.get(id(_unwrap(v))))

    def name(self, grads):
        # Stable over steps (so the engine's response cache hits) and across ranks: the layout
        # of the gradient list, not anything that counts calls.
        layout = "|".join("-" if g is None else f"{type(g).__name__}:{g.dtype.name}:{g.shape}"
                          for g in grads)
        return f"{self.prefix}.{zlib.crc32(layout.encode()):08x}"

    def __call__(self, grads, variables=None):
        grads = list(grads)
        if self.sparse_as_dense:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        ps = self.process_set
        if not ps.included() or ps.size() == 1 or all(g is None for g in grads):
            return grads
        order = self._order(grads, variables)
        with tf.device(self.device_dense):
            reduced = reduce_group([grads[i] for i in order], self.op, self.prescale,
                                   self.postscale, self.compression, self.name(grads), ps,
                                   differentiable=False)
        result = [None] * len(grads)
        for i, value in zip(order, reduced):
            result[i] = value
        return result


def _unwrap(variable):
    # keras.Variable wraps a tf.Variable; either may be listed in `groups`.
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


class _DistributedGradientTape(tf.GradientTape):
    """Wraps a tf.GradientTape: everything goes to the wrapped tape, and gradient() returns the
    gradients reduced across ranks. The wrapped tape's state is never copied, so it does not
    matter whether it is wrapped inside or after its `with` block."""

    def __init__(self, tape, reducer, scale_local_gradients=True):  # pylint: disable=super-init-not-called
        self._fc_tape = tape
        self._fc_reducer = reducer
        self._fc_scale_local = bool(scale_local_gradients)
        self._fc_local_sources = set()  # refs of variables whose gradients stay on this rank

    def __enter__(self):
        self._fc_tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._fc_tape.__exit__(*exc)

    def __getattr__(self, name):
        # Anything not defined here (watch, reset, stop_recording, jacobian, ... and attributes
        # of custom tape classes) belongs to the wrapped tape.
        if name.startswith("_fc_"):
            raise AttributeError(name)
        return getattr(self._fc_tape, name)

    def watch(self, tensor):
        return self._fc_tape.watch(tensor)

    def stop_recording(self):
        return self._fc_tape.stop_recording()

    def reset(self):
        return self._fc_tape.reset()

    def watched_variables(self):
        return self._fc_tape.watched_variables()

    def jacobian(self, *args, **kwargs):
        return self._fc_tape.jacobian(*args, **kwargs)

    def batch_jacobian(self, *args, **kwargs):
        return self._fc_tape.batch_jacobian(*args, **kwargs)

    def register_local_source(self, source):
        """Horovod's: the gradient of `source` (a variable) is not reduced across ranks; with
        scale_local_gradients (the default) it is divided by the process set's size, so that it
        has the scale of the averaged gradients around it."""
        self._fc_local_sources.add(_unwrap(source).ref())

    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        grads = self._fc_tape.gradient(target, sources, output_gradients, unconnected_gradients)
        flat_grads, flat_sources = tf.nest.flatten(grads), tf.nest.flatten(sources)
        local = [_unwrap(s).ref() in self._fc_local_sources if hasattr(_unwrap(s), "ref")
                 else False for s in flat_sources]
        shared = [i for i, is_local in enumerate(local) if not is_local]
        reduced = list(flat_grads)
        for i, g in zip(shared, self._fc_reducer([flat_grads[i] for i in shared],
                                                 [flat_sources[i] for i in shared])):
            reduced[i] = g
        if self._fc_scale_local and any(local):
            n = self._fc_reducer.process_set.size()
            reduced = [_divided(g, n) if is_local else g for g, is_local in zip(reduced, local)]
        return tf.nest.pack_sequence_as(grads, reduced)


def _divided(grad, n):
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / tf.cast(n, grad.values.dtype), grad.indices,
                                grad.dense_shape)
    return grad / tf.cast(n, grad.dtype)


def DistributedGradientTape(gradtape, device_dense="", device_sparse="",
                            compression=Compression.none, sparse_as_dense=False, op=Average,
                            gradient_predivide_factor=1.0, num_groups=0, groups=None,
                            process_set=global_process_set, scale_local_gradients=True):
    """A tape whose gradient() returns the gradients combined across the process set (default:
    averaged). All gradients of a call travel as one fused batch.

    gradtape: the tf.GradientTape to wrap (inside or after its `with` block).
    compression: Compression.none / fp16 / bf16 for dense gradients on the wire.
    sparse_as_dense: turn tf.IndexedSlices gradients into dense tensors and all-reduce them;
        otherwise they are all-gathered (values and indices).
    op: Average (default), Sum, Min, Max or Product.
    gradient_predivide_factor: with op=Average, scale by 1/f before the sum and f/size after.
    groups: a positive integer (accepted; every gradient is already one batch) or a list of
        lists of variables submitted next to each other so the engine fuses each group together.
    num_groups: deprecated spelling of an integer `groups`.
    device_dense, device_sparse: TF devices for the casts around the transfer.
    process_set: the ranks to reduce over.
    scale_local_gradients: divide the gradients of sources registered with
        register_local_source() (which are not reduced) by the process set's size.
    """
    if not isinstance(gradtape, tf.GradientTape):
        raise TypeError(f"DistributedGradientTape wraps a tf.GradientTape, not "
                        f"{type(gradtape).__name__}")
    groups = check_groups(groups, num_groups)
    reducer = GradientReducer("DistributedGradientTape", compression, sparse_as_dense, op,
                              gradient_predivide_factor, groups, process_set, device_dense,
                              device_sparse)
    return _DistributedGradientTape(gradtape, reducer, scale_local_gradients)


def PartialDistributedGradientTape(gradtape, device_dense="", device_sparse="",
                                   compression=Compression.none, sparse_as_dense=False,
                                   op=Average, gradient_predivide_factor=1.0, num_groups=0,
                                   groups=None, process_set=global_process_set,
                                   local_layers=None, scale_local_gradients=True):
    """A DistributedGradientTape that leaves the gradients of `local_layers` (Keras layers, or
    one layer) unreduced: each rank keeps its own (scaled by 1/size with
    scale_local_gradients, as in Horovod). The other arguments are DistributedGradientTape's."""
    import keras

    if local_layers is None:
        local_layers = []
    elif isinstance(local_layers, keras.layers.Layer):
        local_layers = [local_layers]
    elif not all(isinstance(layer, keras.layers.Layer) for layer in local_layers):
        raise ValueError("All local layers must be of tf.keras.layers.Layer type.")
    tape = DistributedGradientTape(gradtape, device_dense, device_sparse, compression,
                                   sparse_as_dense, op, gradient_predivide_factor, num_groups,
                                   groups, process_set, scale_local_gradients)
    for layer in local_layers:
        for variable in layer.trainable_weights:
            tape.register_local_source(variable)
    return tape
