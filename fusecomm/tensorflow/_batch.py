"""The TensorFlow face's machinery: tensors crossing to the frontend core as NumPy views, and
batches of collectives run as ONE tf.numpy_function (see fusecomm/tensorflow/mpi_ops.py)."""
import re
import weakref

import numpy as np
import tensorflow as tf

from fusecomm._engine import ALLGATHER, ALLTOALL, BROADCAST, OP_NAMES, REDUCESCATTER, ALLREDUCE
from fusecomm._engine import group as _engine_group
from fusecomm._frontend import collectives as _collectives
from fusecomm._frontend import naming
from fusecomm._frontend.numpy_adapter import NumpyAdapter
from fusecomm._frontend.validate import SplitsError as SplitsTypeError
from fusecomm._frontend.validate import check_rows, check_scale, dtype_code
from fusecomm.basics import process_set_id, root_in_set

# ---------------------------------------------------------------------------------------------
# Crossing between TensorFlow and NumPy
# ---------------------------------------------------------------------------------------------


# TensorFlow's kernels assume this alignment (EIGEN_MAX_ALIGN_BYTES); a tensor adopted from a
# less aligned buffer aborts the process. The engine's own buffers are 64-byte aligned too.
_ALIGNMENT = 64


def to_numpy(tensor):
    # np.asarray views an eager CPU tensor's buffer (read-only); .numpy() would copy it.
    return np.asarray(tensor)


def _address(array):
    return array.__array_interface__["data"][0]


def aligned_empty_like(array):
    """An output buffer TensorFlow can adopt without a copy (np.empty gives 16-byte alignment
    for large arrays)."""
    raw = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
    offset = -_address(raw) % _ALIGNMENT
    return raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)


def to_tensor(array):
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


def check_graph_context():
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


class _AlignedNumpyAdapter(NumpyAdapter):
    """NumPy arrays whose out-of-place results TensorFlow can adopt (see aligned_empty_like)."""

    def empty_like(self, array):
        return aligned_empty_like(array)


# The engine side of every TensorFlow collective: the NumPy views of its tensors.
_ops = _collectives.Collectives(_AlignedNumpyAdapter())


def _dtype(tensor):
    """The tensor's dtype, after checking that the engine can carry it."""
    dtype_code(tensor.dtype.name)
    return tensor.dtype


def _check_rows(tensor, op_type):
    check_rows(tensor.shape.rank, op_type)


def as_tensor(value):
    return value if isinstance(value, tf.Tensor) else tf.convert_to_tensor(value)


class InvalidArgumentError(tf.errors.InvalidArgumentError, ValueError):
    """An eager collective the engine refused (e.g. alltoall splits that do not add up to the
    rows): tf.errors.InvalidArgumentError, as Horovod's TensorFlow kernels raise, and the
    ValueError fusecomm's other faces raise. In a graph, TensorFlow raises its own
    InvalidArgumentError for the same refusal when the graph runs."""


# ---------------------------------------------------------------------------------------------
# Batches: several collectives submitted together, then waited on together
# ---------------------------------------------------------------------------------------------


class Item:
    """One collective inside a batch: its input tensors, output dtypes and static shapes, and how
    to submit it to the engine (submit(arrays, name) -> handle, resolved on every run)."""

    def __init__(self, op_type, inputs, outputs, submit, **attrs):
        self.op_type = op_type
        self.inputs = list(inputs)
        self.outputs = list(outputs)  # [(tf.DType, tf.TensorShape)]
        self.submit = submit
        self.attrs = attrs  # what the gradient needs: op, scales, root, process set


_graph_names = weakref.WeakKeyDictionary()  # graph -> {base name: times used}


def graph_name(base):
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
    return graph_name(f"{OP_NAMES[items[0].op_type]}_{label}")


def batch_names(items, name):
    """The engine names of a batch, or None to draw them from the per-process-set counter on
    every run (eager calls, whose tensors have no graph names)."""
    if name is None:
        if tf.executing_eagerly():
            return None
        name = _default_graph_name(items)
    return [name] if len(items) == 1 else naming.member_names(name, len(items))


def run_numpy(items, names, arrays):
    """Submits every item, then waits for all: one fused batch for the engine."""
    ps_id = process_set_id(items[0].attrs["process_set"])
    if names is None:  # the same per-process-set counter as the NumPy API's unnamed ops
        base = naming.counter_name(items[0].op_type, ps_id)
        # Complete: a counter name never comes back, so no request is kept for it.
        names = ([naming.Complete(base)] if len(items) == 1 else
                 naming.member_names(base, len(items)))
    handles, position = [], 0
    with _engine_group(ps_id):  # fused as one
        for item, name in zip(items, names):
            count = len(item.inputs)
            handles.append(item.submit(arrays[position:position + count], name))
            position += count
    results = []
    for item, handle in zip(items, handles):
        result = handle.wait()
        results.extend(result if item.op_type == ALLTOALL else (result,))
    return results


def execute_raw(items, inputs, names):
    if tf.executing_eagerly():
        arrays = [to_numpy(t) for t in inputs]
        try:
            results = run_numpy(items, names, arrays)
        except ValueError as e:
            if type(e) is not ValueError:  # NotInitializedError is one too: keep it
                raise
            raise InvalidArgumentError(None, None, str(e)) from None
        return [to_tensor(a) for a in results]
    check_graph_context()
    specs = [spec for item in items for spec in item.outputs]
    outputs = tf.numpy_function(lambda *arrays: run_numpy(items, names, arrays), list(inputs),
                                [dtype for dtype, _ in specs], stateful=True, name="fusecomm")
    for output, (_, shape) in zip(outputs, specs):
        output.set_shape(shape)
    return outputs


# ---------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------


def process_set_size(process_set):
    process_set_id(process_set)  # raises now, not at run time, if the set is unknown
    return process_set.size()


def allreduce_item(tensor, op, prescale, postscale, process_set):
    def submit(arrays, name):
        return _ops.allreduce(arrays[0], name, op, prescale, postscale, process_set)

    return Item(ALLREDUCE, [tensor], [(_dtype(tensor), tensor.shape)], submit, op=op,
                 prescale=prescale, postscale=postscale, process_set=process_set)


def _gathered_shape(shape):
    return tf.TensorShape(None) if shape.rank is None else tf.TensorShape([None] + shape[1:])


def allgather_item(tensor, process_set):
    _check_rows(tensor, ALLGATHER)

    def submit(arrays, name):
        return _ops.allgather(arrays[0], name, process_set)

    return Item(ALLGATHER, [tensor], [(_dtype(tensor), _gathered_shape(tensor.shape))], submit,
                 process_set=process_set)


def broadcast_item(tensor, root_rank, process_set):
    # root_rank is a global rank, also inside a process set (as in Horovod); check it now.
    root_in_set(root_rank, process_set)
    root = int(root_rank)
    if process_set_id(process_set) == 0 and not 0 <= root < process_set.size():
        raise ValueError(f"root_rank {root} is out of range for {process_set.size()} ranks")

    def submit(arrays, name):
        return _ops.broadcast(arrays[0], root, name, process_set)

    return Item(BROADCAST, [tensor], [(_dtype(tensor), tensor.shape)], submit, root=root,
                 process_set=process_set)


def reducescatter_item(tensor, op, prescale, postscale, process_set):
    _check_rows(tensor, REDUCESCATTER)
    shape = tensor.shape
    if shape.rank is not None and shape[0] is not None:
        # The engine gives the first (rows % n) ranks one extra row.
        n, r = process_set_size(process_set), process_set.rank()
        shape = tf.TensorShape([shape[0] // n + (1 if r < shape[0] % n else 0)] + shape[1:])
    elif shape.rank is not None:
        shape = _gathered_shape(shape)

    def submit(arrays, name):
        return _ops.reducescatter(arrays[0], name, op, process_set, prescale, postscale)

    return Item(REDUCESCATTER, [tensor], [(_dtype(tensor), shape)], submit, op=op,
                 prescale=prescale, postscale=postscale, process_set=process_set)


def alltoall_item(tensor, splits, process_set):
    _check_rows(tensor, ALLTOALL)
    inputs = [tensor]
    if splits is not None:
        splits = as_tensor(splits)
        if not splits.dtype.is_integer:
            raise SplitsTypeError(f"splits must be integers, not {splits.dtype.name}")
        if splits.shape.rank is not None and splits.shape.rank != 1:
            raise ValueError("splits must be a 1-D sequence of integers")
        inputs.append(splits)
    n = process_set_size(process_set)

    def submit(arrays, name):
        return _ops.alltoall(arrays[0], arrays[1] if len(arrays) > 1 else None, name,
                             process_set)

    outputs = [(_dtype(tensor), _gathered_shape(tensor.shape)), (tf.int32, tf.TensorShape([n]))]
    return Item(ALLTOALL, inputs, outputs, submit, process_set=process_set)


def scales(prescale_factor, postscale_factor):
    return (check_scale(prescale_factor, "prescale_factor"),
            check_scale(postscale_factor, "postscale_factor"))
