"""TensorFlow collectives on the frontend core's NumPy adapter, with no TensorFlow-compiled code
(the crossing and the batches: fusecomm/tensorflow/_batch.py).

Tensors cross to the engine as NumPy arrays, without copies on the CPU: eagerly, an input
tensor is viewed in place (np.asarray; .numpy() would copy) and the result, written by the
engine into a 64-byte-aligned buffer, becomes a tensor through DLPack. Inside tf.function, ONE
tf.numpy_function carries a whole batch of tensors: it submits every collective of the batch and
then waits for all of them, so the engine fuses them; TensorFlow passes it views of its inputs
and adopts its aligned outputs. py_function was the alternative: it hands over EagerTensors, so
each value costs a copy each way (a 64 MB all-reduce on 2 ranks took ~2.3x the NumPy API's
time that way, ~1.1x this way; `benchmarks/keras_training.py` prints the table).

Every op is differentiable (tf.custom_gradient), with Horovod's gradient rules (the core's table,
fusecomm/_frontend/gradients.py, read by _item_gradients), and works in a tf.compat.v1 graph too (docs/horovod_compat_tf.md).
"""
import numpy as np
import tensorflow as tf

from fusecomm._engine import ALLTOALL, ALLREDUCE, Average, Sum
from fusecomm._frontend import collectives as _collectives
from fusecomm._frontend import gradients
from fusecomm._frontend.validate import resolve_op
from fusecomm.basics import global_process_set, process_set_id, rank
from fusecomm.tensorflow._batch import (InvalidArgumentError, SplitsTypeError,  # noqa: F401
                                        aligned_empty_like, allgather_item, allreduce_item,
                                        alltoall_item, as_tensor, batch_names, broadcast_item,
                                        check_graph_context, execute_raw, graph_name,
                                        process_set_size, reducescatter_item, scales, to_tensor)
from fusecomm.tensorflow.compression import Compression

# Kept under their former names for code that reached them here.
_aligned_empty_like, _to_tensor = aligned_empty_like, to_tensor


def _tape_may_record():
    # tf.custom_gradient costs ~0.2 ms per eager call; skip it when no tape watches. Graphs
    # always get it: the function may be differentiated after tracing.
    if not tf.executing_eagerly():
        return True
    try:
        from tensorflow.python.eager import record
    except ImportError:  # private module moved: keep gradients correct, if slower
        return True
    return record.could_possibly_record()


def _execute(items, name=None, differentiable=True):
    """Runs a batch; returns the flat list of its outputs (alltoall gives two)."""
    inputs = [t for item in items for t in item.inputs]
    names = batch_names(items, name)
    if (not differentiable or not any(t.dtype.is_floating for t in inputs)
            or not _tape_may_record()):
        return execute_raw(items, inputs, names)

    @tf.custom_gradient
    def forward(*xs):
        ys = execute_raw(items, xs, names)

        def backward(*dys):
            return _batch_gradients(items, xs, ys, dys, names)

        return ys, backward

    return list(forward(*inputs))


# ---------------------------------------------------------------------------------------------
# Gradients: Horovod 0.28.1's rules, from the core's table (fusecomm/_frontend/gradients.py),
# which the torch face reads too; here each rule becomes TensorFlow ops.
# ---------------------------------------------------------------------------------------------


def _gradient_name(forward_name):
    """In a graph, a backward collective is named after its forward one, whatever built it
    (tf.gradients in any order, a tape, a function's backward graph): the same on every rank.
    Eagerly (forward_name None) the per-process-set counters name it, as every eager call."""
    if forward_name is None:
        return lambda suffix: None
    base = graph_name(forward_name.removeprefix("tf.") + ".grad")
    return lambda suffix: f"{base}.{suffix}"


def _batch_gradients(items, xs, ys, dys, names):
    grads, position, out = [], 0, 0
    for i, item in enumerate(items):
        n_in, n_out = len(item.inputs), len(item.outputs)
        item_dys = [dy if dy is not None else tf.zeros_like(y)
                    for dy, y in zip(dys[out:out + n_out], ys[out:out + n_out])]
        name = _gradient_name(None if names is None else names[i])
        grads.extend(_item_gradients(item, xs[position:position + n_in], ys[out:out + n_out],
                                     item_dys, name))
        position += n_in
        out += n_out
    return grads


def _item_gradients(item, xs, ys, dys, name):
    """Horovod's rule for the item's collective (fusecomm/_frontend/gradients.py: the table)."""
    if not xs[0].dtype.is_floating:
        return [None] * len(xs)
    a, dy = item.attrs, dys[0]
    ps = a["process_set"]
    rule = gradients.backward_rule(item.op_type, a.get("op", Sum), a.get("prescale", 1.0),
                                   a.get("postscale", 1.0), process_set_size(ps))
    if rule.collective == ALLTOALL:
        # Rows went out by `splits` and came back by the received splits: send gradients back.
        back, _ = alltoall(dy, splits=ys[1], name=name("alltoall"), process_set=ps)
        return [back] + [None] * (len(xs) - 1)
    if rule.keep == gradients.KEEP_OWN_ROWS:
        # One batch (one graph op): two independent collectives in a tf.compat.v1 graph may
        # run in either order, and each holds a thread until its peers arrive.
        rows = tf.shape(xs[0], out_type=tf.int64)[:1]
        reduced, all_rows = _execute([allreduce_item(dy, rule.op, rule.prescale,
                                                      rule.postscale, ps),
                                      allgather_item(rows, ps)], name("allgather"), False)
        start = tf.cumsum(all_rows, exclusive=True)[ps.rank()]
        return [reduced[start:start + rows[0]]]
    if rule.collective == ALLREDUCE:
        grad = allreduce(dy, op=rule.op, prescale_factor=rule.prescale,
                         postscale_factor=rule.postscale, name=name("allreduce"), process_set=ps)
    else:
        grad = allgather(dy, name=name("allgather"), process_set=ps)
    if rule.multiplier != 1:
        grad = grad * tf.constant(rule.multiplier, grad.dtype)
    if rule.keep == gradients.KEEP_ON_ROOT and rank() != a["root"]:
        # Times zero, not zeros_like: in a graph, zeros_like of a known shape would not run
        # the collective on this rank, and the others would wait for it (Horovod's way too).
        grad = grad * tf.constant(0, dy.dtype)
    return [grad]


# ---------------------------------------------------------------------------------------------
# Public ops
# ---------------------------------------------------------------------------------------------


def reduce_group(tensors, op, prescale, postscale, compression, name, process_set,
                 differentiable=True):
    """Reduces dense tensors and tf.IndexedSlices (None entries pass through) as ONE batch.

    Dense tensors are compressed and all-reduced; IndexedSlices are all-gathered (values and
    indices), which sums them once the update scatters the duplicate indices, as Horovod does.
    Integer IndexedSlices that need scaling (Average, prescale, postscale) are summed densely by
    the engine instead: its integer rule scales the sum and truncates once, as for dense tensors;
    scaling each gathered row would truncate before the sum (and 0.5 is no uint8)."""
    n = process_set_size(process_set)
    items, plan = [], []
    for tensor in tensors:
        if tensor is None:
            plan.append(None)
        elif isinstance(tensor, tf.IndexedSlices):
            scale = gradients.sparse_scale(op, n, prescale, postscale)
            if scale != 1.0 and not tensor.values.dtype.is_floating:
                items.append(allreduce_item(tf.convert_to_tensor(tensor), op, prescale,
                                             postscale, process_set))
                plan.append(("sparse_dense", tensor))
                continue
            items += [allgather_item(tensor.values, process_set),
                      allgather_item(tensor.indices, process_set)]
            plan.append(("sparse", tensor))
        else:
            tensor = as_tensor(tensor)
            compressed, ctx = compression.compress(tensor)
            items.append(allreduce_item(compressed, op, prescale, postscale, process_set))
            plan.append(("dense", ctx))
    if not items:
        return list(tensors)
    outputs = iter(_execute(items, name, differentiable))
    results = []
    for entry in plan:
        if entry is None:
            results.append(None)
        elif entry[0] == "dense":
            results.append(compression.decompress(next(outputs), entry[1]))
        elif entry[0] == "sparse_dense":  # every row, as slices of the same dense_shape
            values, slices = next(outputs), entry[1]
            rows = tf.range(tf.shape(values, out_type=slices.indices.dtype)[0])
            results.append(tf.IndexedSlices(values, rows, dense_shape=slices.dense_shape))
        else:
            values, indices = next(outputs), next(outputs)
            scale = gradients.sparse_scale(op, n, prescale, postscale)
            if scale != 1.0:
                values = values * tf.constant(scale, values.dtype)
            results.append(tf.IndexedSlices(values, indices, dense_shape=entry[1].dense_shape))
    return results


def allreduce(tensor, average=None, device_dense="", device_sparse="",
              compression=Compression.none, op=None, prescale_factor=1.0, postscale_factor=1.0,
              name=None, process_set=global_process_set):
    """Reduces a tf.Tensor (or tf.Variable, or array-like) over the process set; default op:
    Average. A tf.IndexedSlices is all-gathered instead (values and indices), as in Horovod.
    device_dense/device_sparse pick the TF device of the surrounding casts (the data itself
    always crosses through host memory)."""
    op = resolve_op(op, average)
    prescale, postscale = scales(prescale_factor, postscale_factor)
    device = device_sparse if isinstance(tensor, tf.IndexedSlices) else device_dense
    with tf.device(device):
        return reduce_group([tensor], op, prescale, postscale, compression, name, process_set)[0]


def grouped_allreduce(tensors, average=None, device_dense="", device_sparse="",
                      compression=Compression.none, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set, name=None):
    """allreduce of every tensor, submitted together so the engine fuses them."""
    tensors = list(tensors)
    if not tensors:
        return tensors
    op = resolve_op(op, average)
    prescale, postscale = scales(prescale_factor, postscale_factor)
    with tf.device(device_dense):
        return reduce_group(tensors, op, prescale, postscale, compression, name, process_set)


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's tensor along the first dimension (which may differ by rank)."""
    return _execute([allgather_item(as_tensor(tensor), process_set)], name)[0]


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    return _execute([allgather_item(t, process_set) for t in tensors], name)


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's tensor on every rank (root_rank is a global rank, also when a
    process set is given)."""
    return _execute([broadcast_item(as_tensor(tensor), root_rank, process_set)], name)[0]


def grouped_broadcast(tensors, root_rank, name=None, process_set=global_process_set):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    return _execute([broadcast_item(t, root_rank, process_set) for t in tensors], name)


def broadcast_(variables, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast: every variable takes root_rank's value (one batch). Returns the new
    values."""
    variables = list(variables)
    values = grouped_broadcast(variables, root_rank, name=name, process_set=process_set)
    assigned = [variable.assign(value) for variable, value in zip(variables, values)]
    if tf.executing_eagerly() or tf.inside_function():  # tf.function runs the assignments
        return values
    # A tf.compat.v1 graph: values that depend on the assignments, so running them assigns.
    with tf.control_dependencies([a for a in assigned if a is not None]):
        return [tf.identity(value) for value in values]


def reducescatter(tensor, device_dense="", compression=Compression.none, op=Average, name=None,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    """Reduces over ranks and leaves each rank a slice of the first dimension (the first
    rows % size ranks get one extra row)."""
    return grouped_reducescatter([tensor], device_dense, compression, op, process_set,
                                 prescale_factor, postscale_factor, name)[0]


def grouped_reducescatter(tensors, device_dense="", compression=Compression.none, op=Average,
                          process_set=global_process_set, prescale_factor=1.0,
                          postscale_factor=1.0, name=None):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    op = resolve_op(op)
    prescale, postscale = scales(prescale_factor, postscale_factor)
    with tf.device(device_dense):
        compressed = [compression.compress(t) for t in tensors]
        outputs = _execute([reducescatter_item(c, op, prescale, postscale, process_set)
                            for c, _ in compressed], name)
        return [compression.decompress(out, ctx) for out, (_, ctx) in zip(outputs, compressed)]


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows (default: equal parts) of `tensor` to rank i. Returns the rows
    received in rank order, and, when `splits` was given, how many came from each rank."""
    output, received = _execute([alltoall_item(as_tensor(tensor), splits, process_set)], name)
    return (output, received) if splits is not None else output


def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has reached it. Inside tf.function it returns
    the op (a scalar), which runs in program order like every stateful op."""
    process_set_id(process_set)
    if tf.executing_eagerly():
        return _collectives.barrier(process_set)
    check_graph_context()

    def wait():
        _collectives.barrier(process_set)
        return np.int32(0)

    return tf.numpy_function(wait, [], tf.int32, stateful=True, name="fusecomm_barrier")


def join(process_set=global_process_set):
    """This rank has no more data. Until every rank of the process set has joined, it takes part
    in the others' collectives contributing nothing (zeros to all-reduces, whose Average still
    divides by the full size, as in Horovod). Returns the rank that joined last (inside
    tf.function: an int32 scalar tensor).

    Unnamed eager collectives of the other ranks advance their automatic names meanwhile; the
    gradient reductions of DistributedGradientTape / DistributedOptimizer and every collective
    inside tf.function have fixed names, so they are safe after a join."""
    process_set_id(process_set)
    if tf.executing_eagerly():
        return _collectives.join(process_set)
    check_graph_context()
    return tf.numpy_function(lambda: np.int32(_collectives.join(process_set)), [],
                             tf.int32, stateful=True, name="fusecomm_join")


# Horovod's *_op helpers return values fixed for the life of the job here (no elastic mode), so
# constants are exact.
def size_op(process_set_id=0, name=None):
    return tf.constant(_process_set_by_id(process_set_id).size(), tf.int32, name=name)


def rank_op(name=None):
    return tf.constant(global_process_set.rank(), tf.int32, name=name)


def local_size_op(name=None):
    from fusecomm.basics import local_size

    return tf.constant(local_size(), tf.int32, name=name)


def local_rank_op(name=None):
    from fusecomm.basics import local_rank

    return tf.constant(local_rank(), tf.int32, name=name)


def process_set_included_op(process_set_id=0, name=None):
    return tf.constant(int(_process_set_by_id(process_set_id).included()), tf.int32, name=name)


def _process_set_by_id(ps_id):
    from fusecomm import basics

    if ps_id == 0:
        return global_process_set
    for ps in basics._added_sets:
        if ps.process_set_id == ps_id:
            return ps
    raise ValueError(f"no process set with id {ps_id} has been added")
