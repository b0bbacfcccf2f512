"""The bridge every frontend uses to reach the C++ engine: codes, names, submission and handles.

Frontends pass raw data pointers; this module keeps the objects those pointers belong to alive
until the handle is synchronized, so the engine never reads freed memory.
"""
import contextlib
import operator
import threading

from fusecomm import _core

# Operation codes (csrc/common/types.h: OpType).
ALLREDUCE, ALLGATHER, BROADCAST, REDUCESCATTER, ALLTOALL, BARRIER, JOIN = range(7)
OP_NAMES = {ALLREDUCE: "allreduce", ALLGATHER: "allgather", BROADCAST: "broadcast",
            REDUCESCATTER: "reducescatter", ALLTOALL: "alltoall", BARRIER: "barrier",
            JOIN: "join"}

# Element type codes (csrc/common/types.h: DataType), keyed by the dtype's name.
DTYPE_CODES = {"uint8": 0, "int8": 1, "int32": 2, "int64": 3, "float16": 4, "bfloat16": 5,
               "float32": 6, "float64": 7, "bool": 8, "int16": 9, "uint16": 10}
SUPPORTED_DTYPES = ", ".join(DTYPE_CODES)

# Reduce ops (csrc/common/types.h: ReduceOp); Horovod exposes them as integers too.
Sum, Average, Min, Max, Product = 0, 1, 2, 3, 4
Adasum = 5  # accepted as a name so scripts import; using it raises NotImplementedError
_OP_LABELS = {Sum: "Sum", Average: "Average", Min: "Min", Max: "Max", Product: "Product"}

# Engine-allocated device memory of a finished collective (CUDA builds).
DeviceBuffer = getattr(_core, "DeviceBuffer", type(None))


class CudaBytes:
    """A DeviceBuffer as a 1-D uint8 __cuda_array_interface__ (torch.as_tensor and cupy.asarray
    wrap it without copying; the wrapper keeps the engine's memory alive). The data is complete
    when the collective's handle is, so no stream is named."""

    def __init__(self, buffer):
        self.buffer = buffer
        self.__cuda_array_interface__ = {"shape": (buffer.nbytes,), "typestr": "|u1",
                                         "data": (buffer.ptr, False), "version": 3,
                                         "strides": None, "stream": None}


_lock = threading.Lock()
_handles = {}  # handle id -> (objects kept alive, finisher(result tuple) -> value)
_name_counters = {}


class UnsupportedDtypeError(TypeError, ValueError):
    """A tensor of a dtype the engine has no code for. Both a TypeError (fusecomm's own
    convention) and a ValueError (what Horovod raises: 'Tensor type ... is not supported'), so
    that either `except` keeps working."""


def dtype_code(dtype_name, shown=None):
    """The engine's code for a dtype name; `shown` is how the caller's framework spells the
    dtype and the supported ones, for the message."""
    code = DTYPE_CODES.get(str(dtype_name))
    if code is None:
        what, supported = shown or (dtype_name, SUPPORTED_DTYPES)
        raise UnsupportedDtypeError(f"fusecomm does not support dtype {what}; "
                                    f"supported: {supported}")
    return code


def resolve_op(op, average=None, default=Average):
    """Horovod's rules: `average` is deprecated in favour of `op`; both at once is an error."""
    if op is not None and average is not None:
        raise ValueError("pass either op= or the deprecated average=, not both")
    if average is not None:
        return Average if average else Sum
    if op is None:
        return default
    if op == Adasum:
        raise NotImplementedError("Adasum is not implemented in fusecomm yet; use Average or Sum")
    if op not in _OP_LABELS:
        raise ValueError(f"unknown reduce op {op!r}; use Sum, Average, Min, Max or Product")
    return int(op)


def auto_name(op_type, name, process_set_id=0):
    """Unnamed collectives get a counter per operation and process set, so ranks calling in the
    same order agree (an op on a set some ranks are not in must not shift the others' names)."""
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        return name
    key = (op_type, process_set_id)
    with _lock:
        n = _name_counters.get(key, 0)
        _name_counters[key] = n + 1
    where = f"set{process_set_id}." if process_set_id else ""
    return f"{OP_NAMES[op_type]}.noname.{where}{n}"


def check_scale(factor, what):
    try:
        value = float(factor)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{what} must be a finite number, not {factor!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, not {value}")
    return value


def check_int(value, what):
    """An integer argument (root rank, split); OverflowError and floats become clear errors."""
    try:
        result = operator.index(value)  # ints and NumPy integers; not floats or strings
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {value!r}") from None
    if not -(1 << 62) < result < (1 << 62):
        raise ValueError(f"{what} {result} is out of range")
    return result


@contextlib.contextmanager
def group(process_set_id=0):
    """Collectives submitted inside are queued to the engine together, so every rank's
    negotiation sees a group's members all at once and they fuse as one (Horovod's grouped
    operations)."""
    _core.begin_group(process_set_id)
    try:
        yield
    finally:
        _core.end_group(process_set_id)


def submit(op_type, name, dtype, shape, input_ptr, output_ptr, keep_alive, finisher, *,
           op=Sum, prescale=1.0, postscale=1.0, root=0, device=-1, stream=0, algorithm=None,
           splits=None, process_set_id=0):
    """Queues one collective; returns its handle. `finisher(result)` turns the engine's result
    tuple (uint8 array, DeviceBuffer or None; shape; received splits) into what synchronize
    returns. Device tensors: `device` is the CUDA ordinal, `stream` the caller's CUDA stream
    handle (the engine waits for the work queued on it before reading the tensor)."""
    if algorithm is None:
        algorithm = "auto"
    elif not isinstance(algorithm, str):
        raise TypeError("algorithm must be a string such as 'ring' or 'mpi'")
    if splits is not None and len(splits) == 0:
        raise ValueError("splits is empty; pass one entry per rank, or None for equal splits")
    handle = _core.enqueue(op_type, name, dtype, [int(d) for d in shape], input_ptr, output_ptr,
                           int(op), prescale, postscale, check_int(root, "root_rank"),
                           int(device), algorithm,
                           [check_int(s, "split") for s in (splits or [])], int(process_set_id),
                           int(stream))
    with _lock:
        _handles[handle] = (keep_alive, finisher)
    return handle


def _entry(handle):
    with _lock:
        entry = _handles.get(handle)
    if entry is None:
        raise ValueError(f"unknown handle {handle!r}: already synchronized or never returned "
                         "by an *_async call")
    return entry


def poll(handle):
    """True when the operation behind `handle` has finished (it may still have failed)."""
    _entry(handle)
    return _core.poll(handle)


def synchronize(handle):
    """Waits for `handle` and returns its result; raises CollectiveError if it failed.

    The wait releases the GIL and wakes every 50 ms to run Python's signal handlers: when one
    raises (KeyboardInterrupt), that exception comes out of here while the collective stays in
    flight, its buffers kept alive, and the handle can be synchronized again."""
    _, finisher = _entry(handle)
    try:
        _core.wait(handle)
    except _core.CollectiveError:
        _forget(handle)
        raise
    try:
        return finisher(_core.take_result(handle))
    finally:
        _forget(handle)


def _forget(handle):
    with _lock:
        _handles.pop(handle, None)


def forget_all_handles():
    with _lock:
        _handles.clear()
        _name_counters.clear()
