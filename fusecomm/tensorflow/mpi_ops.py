"""TensorFlow collectives on top of fusecomm's NumPy API, with no TensorFlow-compiled code.

Tensors cross to the engine as NumPy arrays, without copies on the CPU: eagerly, an input
tensor is viewed in place (np.asarray; .numpy() would copy) and the result, written by the
engine into a 64-byte-aligned buffer, becomes a tensor through DLPack. Inside tf.function, ONE
tf.numpy_function carries a whole batch of tensors: it submits every collective of the batch and
then waits for all of them, so the engine fuses them; TensorFlow passes it views of its inputs
and adopts its aligned outputs. py_function was the alternative: it hands over EagerTensors, so
each value costs a copy each way (a 64 MB all-reduce on 2 ranks took ~2.3x the NumPy API's
time that way, ~1.1x this way; `benchmarks/keras_training.py` prints the table).

Every op is differentiable (tf.custom_gradient), with Horovod's TensorFlow gradient rules (see
_item_gradients), and works in a tf.compat.v1 graph too (docs/horovod_compat_tf.md).
"""
import re
import weakref

import numpy as np
import tensorflow as tf

from fusecomm import _engine
from fusecomm import ops as _np_ops
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BROADCAST, OP_NAMES, REDUCESCATTER,
                              Average, Sum)
from fusecomm.basics import global_process_set, process_set_id, rank, root_in_set
from fusecomm.tensorflow.compression import Compression

# ---------------------------------------------------------------------------------------------
# Crossing between TensorFlow and NumPy
# ---------------------------------------------------------------------------------------------


# TensorFlow's kernels assume this alignment (EIGEN_MAX_ALIGN_BYTES); a tensor adopted from a
# less aligned buffer aborts the process. The engine's own buffers are 64-byte aligned too.
_ALIGNMENT = 64


def _to_numpy(tensor):
    # np.asarray views an eager CPU tensor's buffer (read-only); .numpy() would copy it.
    return np.asarray(tensor)


def _address(array):
    return array.__array_interface__["data"][0]


def _aligned_empty_like(array):
    """An output buffer TensorFlow can adopt without a copy (np.empty gives 16-byte alignment
    for large arrays)."""
    raw = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
    offset = -_address(raw) % _ALIGNMENT
    return raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)


def _to_tensor(array):
    """Wraps a NumPy result as an eager tensor, sharing its memory when DLPack allows."""
    if array.size and _address(array) % _ALIGNMENT:
        return tf.convert_to_tensor(array)  # misaligned: one copy
    try:
        if array.dtype.name == "bfloat16":  # DLPack has no bfloat16: move the bits as uint16
            bits = tf.experimental.dlpack.from_dlpack(array.view(np.uint16).__dlpack__())
            return tf.bitcast(bits, tf.bfloat16)
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    except (BufferError, TypeError, ValueError, tf.errors.OpError):
        return tf.convert_to_tensor(array)  # e.g. a read-only array: one copy


def _check_graph_context():
    # Only eager callers and ordinary graphs can run a Python function; an XLA cluster cannot.
    try:
        from tensorflow.python.ops import control_flow_util

        in_xla = control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except (ImportError, AttributeError):  # private API moved: let TensorFlow report it
        in_xla = False
    if in_xla:
        raise RuntimeError("fusecomm collectives run as tf.numpy_function, which XLA cannot "
                           "compile; use tf.function(jit_compile=False) or "
                           "model.compile(..., jit_compile=False)")


def _dtype(tensor):
    """The tensor's dtype, after checking that the engine can carry it."""
    _engine.dtype_code(tensor.dtype.name)
    return tensor.dtype


def _check_rows(tensor, what):
    if tensor.shape.rank == 0:
        raise ValueError(f"{what} needs a tensor with at least one dimension")


def _as_tensor(value):
    return value if isinstance(value, tf.Tensor) else tf.convert_to_tensor(value)


class SplitsTypeError(TypeError, ValueError):
    """Non-integer alltoall splits. Horovod's TensorFlow op refuses them with a ValueError
    (eagerly) or a TypeError (while building a graph); this is both."""

    # Exception's own constructor: tf.function's tracing re-raises the error as its type only
    # for exceptions built from a message alone (otherwise as a StagingError).
    __init__ = Exception.__init__


class InvalidArgumentError(tf.errors.InvalidArgumentError, ValueError):
    """An eager collective the engine refused (e.g. alltoall splits that do not add up to the
    rows): tf.errors.InvalidArgumentError, as Horovod's TensorFlow kernels raise, and the
    ValueError fusecomm's other faces raise. In a graph, TensorFlow raises its own
    InvalidArgumentError for the same refusal when the graph runs."""


# ---------------------------------------------------------------------------------------------
# Batches: several collectives submitted together, then waited on together
# ---------------------------------------------------------------------------------------------


class _Item:
    """One collective inside a batch: its input tensors, output dtypes and static shapes, and how
    to submit it to the engine (submit(arrays, name) -> handle, resolved on every run)."""

    def __init__(self, op_type, inputs, outputs, submit, **attrs):
        self.op_type = op_type
        self.inputs = list(inputs)
        self.outputs = list(outputs)  # [(tf.DType, tf.TensorShape)]
        self.submit = submit
        self.attrs = attrs  # what the gradient needs: op, scales, root, process set


_graph_names = weakref.WeakKeyDictionary()  # graph -> {base name: times used}


def _graph_name(base):
    """`base`, made unique inside the graph being built by _1, _2... in the order of use. The
    graph's current name scope is left out: it depends on what built the op (tf.gradients
    opens gradients, gradients_1, ... in call order), and the base already names the op's
    input with its scopes. A retrace starts afresh, so names recur across traces and the
    engine's response cache recognises them on every step."""
    used = _graph_names.setdefault(tf.compat.v1.get_default_graph(), {})
    count = used.get(base, 0)
    used[base] = count + 1
    return "tf." + (base if count == 0 else f"{base}_{count}")


def _normalize_name(name):
    return re.sub("[^a-zA-Z0-9_]", "_", name)


def _default_graph_name(items):
    """Horovod's rule: a graph collective is named after its operation and its input tensors'
    graph names, not after the order in which the graph was built, so ranks that build the same
    ops in different orders (or through different code paths, e.g. tf.gradients) still agree."""
    inputs = [item.inputs[0] for item in items]
    tensors = inputs[:1] if len(inputs) == 1 else [inputs[0], inputs[-1]]
    label = "_".join(_normalize_name(getattr(t, "name", "") or "tensor") for t in tensors)
    return _graph_name(f"{OP_NAMES[items[0].op_type]}_{label}")


def _batch_names(items, name):
    """The engine names of a batch, or None to draw them from the per-process-set counter on
    every run (eager calls, whose tensors have no graph names)."""
    if name is None:
        if tf.executing_eagerly():
            return None
        name = _default_graph_name(items)
    if len(items) == 1:
        return [name]
    return [f"{name}.{i}" for i in range(len(items))]


def _run_numpy(items, names, arrays):
    """Submits every item, then waits for all: one fused batch for the engine."""
    if names is None:  # the same per-process-set counter as the NumPy API's unnamed ops
        base = _engine.auto_name(items[0].op_type, None,
                                 process_set_id(items[0].attrs["process_set"]))
        names = [base] if len(items) == 1 else [f"{base}.{i}" for i in range(len(items))]
    handles, position = [], 0
    with _engine.group(process_set_id(items[0].attrs["process_set"])):  # fused as one
        for item, name in zip(items, names):
            count = len(item.inputs)
            handles.append(item.submit(arrays[position:position + count], name))
            position += count
    results = []
    for handle in handles:
        result = _np_ops.synchronize(handle)
        results.extend(result if isinstance(result, tuple) else (result,))
    return results


def _execute_raw(items, inputs, names):
    if tf.executing_eagerly():
        arrays = [_to_numpy(t) for t in inputs]
        try:
            results = _run_numpy(items, names, arrays)
        except ValueError as e:
            if type(e) is not ValueError:  # NotInitializedError is one too: keep it
                raise
            raise InvalidArgumentError(None, None, str(e)) from None
        return [_to_tensor(a) for a in results]
    _check_graph_context()
    specs = [spec for item in items for spec in item.outputs]
    outputs = tf.numpy_function(lambda *arrays: _run_numpy(items, names, arrays), list(inputs),
                                [dtype for dtype, _ in specs], stateful=True, name="fusecomm")
    for output, (_, shape) in zip(outputs, specs):
        output.set_shape(shape)
    return outputs


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
    names = _batch_names(items, name)
    if (not differentiable or not any(t.dtype.is_floating for t in inputs)
            or not _tape_may_record()):
        return _execute_raw(items, inputs, names)

    @tf.custom_gradient
    def forward(*xs):
        ys = _execute_raw(items, xs, names)

        def backward(*dys):
            return _batch_gradients(items, xs, ys, dys, names)

        return ys, backward

    return list(forward(*inputs))


# ---------------------------------------------------------------------------------------------
# Gradients: Horovod 0.28.1's TensorFlow rules (horovod/tensorflow/mpi_ops.py), so that code
# ported from Horovod trains the same: allreduce's gradient is the same allreduce of the
# incoming gradients; allgather and broadcast AVERAGE the incoming gradients over the ranks
# (then take this rank's rows / keep them on the root); reducescatter all-gathers them (times the
# set's size for Sum); alltoall sends them back. docs/horovod_compat_tf.md has the table.
# ---------------------------------------------------------------------------------------------


def _gradient_name(forward_name):
    """In a graph, a backward collective is named after its forward one, whatever built it
    (tf.gradients in any order, a tape, a function's backward graph): the same on every rank.
    Eagerly (forward_name None) the per-process-set counters name it, as every eager call."""
    if forward_name is None:
        return lambda suffix: None
    base = _graph_name(forward_name.removeprefix("tf.") + ".grad")
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
    if not xs[0].dtype.is_floating:
        return [None] * len(xs)
    a, dy = item.attrs, dys[0]
    ps = a["process_set"]
    if item.op_type in (ALLREDUCE, REDUCESCATTER) and a["op"] not in (Sum, Average):
        raise NotImplementedError(f"fusecomm has no gradient for {OP_NAMES[item.op_type]} with "
                                  "op=Min/Max/Product; use Sum or Average")
    if item.op_type == ALLREDUCE:
        return [allreduce(dy, op=a["op"], prescale_factor=a["prescale"],
                          postscale_factor=a["postscale"], name=name("allreduce"),
                          process_set=ps)]
    if item.op_type == ALLGATHER:
        # One batch (one graph op): two independent collectives in a tf.compat.v1 graph may
        # run in either order, and each holds a thread until its peers arrive.
        rows = tf.shape(xs[0], out_type=tf.int64)[:1]
        averaged, all_rows = _execute([_allreduce_item(dy, Average, 1.0, 1.0, ps),
                                       _allgather_item(rows, ps)], name("allgather"), False)
        start = tf.cumsum(all_rows, exclusive=True)[ps.rank()]
        return [averaged[start:start + rows[0]]]
    if item.op_type == BROADCAST:
        averaged = allreduce(dy, op=Average, name=name("allreduce"), process_set=ps)
        # Times zero, not zeros_like: in a graph, zeros_like of a known shape would not run
        # the collective on this rank, and the others would wait for it (Horovod's way too).
        return [averaged if rank() == a["root"] else averaged * tf.constant(0, dy.dtype)]
    if item.op_type == REDUCESCATTER:
        if a["op"] == Sum:
            dy = dy * tf.constant(_process_set_size(ps), dy.dtype)
        return [allgather(dy, name=name("allgather"), process_set=ps)]
    if item.op_type == ALLTOALL:
        # Rows went out by `splits` and came back by the received splits: send gradients back.
        back, _ = alltoall(dy, splits=ys[1], name=name("alltoall"), process_set=ps)
        return [back] + [None] * (len(xs) - 1)
    raise AssertionError(f"no gradient rule for {OP_NAMES[item.op_type]}")


# ---------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------


def _process_set_size(process_set):
    process_set_id(process_set)  # raises now, not at run time, if the set is unknown
    return process_set.size()


def _allreduce_item(tensor, op, prescale, postscale, process_set):
    def submit(arrays, name):
        array = _np_ops._as_array(arrays[0])
        return _np_ops._allreduce_into(array, _aligned_empty_like(array), None, name, op,
                                       prescale, postscale, process_set, None)

    return _Item(ALLREDUCE, [tensor], [(_dtype(tensor), tensor.shape)], submit, op=op,
                 prescale=prescale, postscale=postscale, process_set=process_set)


def _gathered_shape(shape):
    return tf.TensorShape(None) if shape.rank is None else tf.TensorShape([None] + shape[1:])


def _allgather_item(tensor, process_set):
    _check_rows(tensor, "allgather")

    def submit(arrays, name):
        return _np_ops.allgather_async(arrays[0], name=name, process_set=process_set)

    return _Item(ALLGATHER, [tensor], [(_dtype(tensor), _gathered_shape(tensor.shape))], submit,
                 process_set=process_set)


def _broadcast_item(tensor, root_rank, process_set):
    # root_rank is a global rank, also inside a process set (as in Horovod); check it now.
    root_in_set(root_rank, process_set)
    root = int(root_rank)
    if process_set_id(process_set) == 0 and not 0 <= root < process_set.size():
        raise ValueError(f"root_rank {root} is out of range for {process_set.size()} ranks")

    def submit(arrays, name):
        array = _np_ops._as_array(arrays[0])
        return _np_ops._broadcast_into(array, _aligned_empty_like(array), root, name, process_set)

    return _Item(BROADCAST, [tensor], [(_dtype(tensor), tensor.shape)], submit, root=root,
                 process_set=process_set)


def _reducescatter_item(tensor, op, prescale, postscale, process_set):
    _check_rows(tensor, "reducescatter")
    shape = tensor.shape
    if shape.rank is not None and shape[0] is not None:
        # The engine gives the first (rows % n) ranks one extra row.
        n, r = _process_set_size(process_set), process_set.rank()
        shape = tf.TensorShape([shape[0] // n + (1 if r < shape[0] % n else 0)] + shape[1:])
    elif shape.rank is not None:
        shape = _gathered_shape(shape)

    def submit(arrays, name):
        return _np_ops.reducescatter_async(arrays[0], name=name, op=op, process_set=process_set,
                                           prescale_factor=prescale, postscale_factor=postscale)

    return _Item(REDUCESCATTER, [tensor], [(_dtype(tensor), shape)], submit, op=op,
                 prescale=prescale, postscale=postscale, process_set=process_set)


def _alltoall_item(tensor, splits, process_set):
    _check_rows(tensor, "alltoall")
    inputs = [tensor]
    if splits is not None:
        splits = _as_tensor(splits)
        if not splits.dtype.is_integer:
            raise SplitsTypeError(f"splits must be integers, not {splits.dtype.name}")
        if splits.shape.rank is not None and splits.shape.rank != 1:
            raise ValueError("splits must be a 1-D sequence of integers")
        inputs.append(splits)
    n = _process_set_size(process_set)

    def submit(arrays, name):
        return _np_ops.alltoall_async(arrays[0], splits=arrays[1] if len(arrays) > 1 else None,
                                      name=name, process_set=process_set)

    outputs = [(_dtype(tensor), _gathered_shape(tensor.shape)), (tf.int32, tf.TensorShape([n]))]
    return _Item(ALLTOALL, inputs, outputs, submit, process_set=process_set)


def _scales(prescale_factor, postscale_factor):
    return (_engine.check_scale(prescale_factor, "prescale_factor"),
            _engine.check_scale(postscale_factor, "postscale_factor"))


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
    n = _process_set_size(process_set)
    scale = prescale * postscale / (n if op == Average else 1)
    items, plan = [], []
    for tensor in tensors:
        if tensor is None:
            plan.append(None)
        elif isinstance(tensor, tf.IndexedSlices):
            if op not in (Sum, Average):
                raise NotImplementedError("only Sum and Average are defined for tf.IndexedSlices; "
                                          "use sparse_as_dense=True for other ops")
            if scale != 1.0 and not tensor.values.dtype.is_floating:
                items.append(_allreduce_item(tf.convert_to_tensor(tensor), op, prescale,
                                             postscale, process_set))
                plan.append(("sparse_dense", tensor))
                continue
            items += [_allgather_item(tensor.values, process_set),
                      _allgather_item(tensor.indices, process_set)]
            plan.append(("sparse", tensor))
        else:
            tensor = _as_tensor(tensor)
            compressed, ctx = compression.compress(tensor)
            items.append(_allreduce_item(compressed, op, prescale, postscale, process_set))
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
    op = _engine.resolve_op(op, average)
    prescale, postscale = _scales(prescale_factor, postscale_factor)
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
    op = _engine.resolve_op(op, average)
    prescale, postscale = _scales(prescale_factor, postscale_factor)
    with tf.device(device_dense):
        return reduce_group(tensors, op, prescale, postscale, compression, name, process_set)


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's tensor along the first dimension (which may differ by rank)."""
    return _execute([_allgather_item(_as_tensor(tensor), process_set)], name)[0]


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    tensors = [_as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    return _execute([_allgather_item(t, process_set) for t in tensors], name)


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's tensor on every rank (root_rank is a global rank, also when a
    process set is given)."""
    return _execute([_broadcast_item(_as_tensor(tensor), root_rank, process_set)], name)[0]


def grouped_broadcast(tensors, root_rank, name=None, process_set=global_process_set):
    tensors = [_as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    return _execute([_broadcast_item(t, root_rank, process_set) for t in tensors], name)


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
    tensors = [_as_tensor(t) for t in tensors]
    if not tensors:
        return tensors
    op = _engine.resolve_op(op)
    prescale, postscale = _scales(prescale_factor, postscale_factor)
    with tf.device(device_dense):
        compressed = [compression.compress(t) for t in tensors]
        outputs = _execute([_reducescatter_item(c, op, prescale, postscale, process_set)
                            for c, _ in compressed], name)
        return [compression.decompress(out, ctx) for out, (_, ctx) in zip(outputs, compressed)]


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows (default: equal parts) of `tensor` to rank i. Returns the rows
    received in rank order, and, when `splits` was given, how many came from each rank."""
    output, received = _execute([_alltoall_item(_as_tensor(tensor), splits, process_set)], name)
    return (output, received) if splits is not None else output


def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has reached it. Inside tf.function it returns
    the op (a scalar), which runs in program order like every stateful op."""
    process_set_id(process_set)
    if tf.executing_eagerly():
        return _np_ops.barrier(process_set=process_set)
    _check_graph_context()

    def wait():
        _np_ops.barrier(process_set=process_set)
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
        return _np_ops.join(process_set=process_set)
    _check_graph_context()
    return tf.numpy_function(lambda: np.int32(_np_ops.join(process_set=process_set)), [],
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
