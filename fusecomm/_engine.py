"""The bridge from the frontend core (fusecomm/_frontend) to the C++ engine: codes, submission
and engine handles.

Frontends pass raw data pointers; this module keeps the objects those pointers belong to alive
until the handle is synchronized, so the engine never reads freed memory.
"""
import contextlib
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

# Reduce ops (csrc/common/types.h: ReduceOp); Horovod exposes them as integers too.
Sum, Average, Min, Max, Product = 0, 1, 2, 3, 4
Adasum = 5  # adaptive summation (csrc/collectives/adasum_allreduce.cc): allreduce, floats, host

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
_handles = {}  # engine handle id -> (objects kept alive, finisher(result tuple) -> value)
CollectiveError = _core.CollectiveError


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


def run(request, input_address, output_address, keep_alive, finisher):
    """A synchronous call: submit(), then wait and return finisher(result). The engine thread is
    not woken for it, since this thread drives the engine's cycle itself (a wake-up per call
    competes for the cores); and nothing is registered unless a signal handler interrupts the
    wait, when the buffers must outlive the collective still in flight."""
    return finisher(_core.run(request, input_address, output_address, _adopt,
                              (keep_alive, finisher)))


def _adopt(handle, entry):
    """Registers a handle whose synchronous wait a signal handler abandoned."""
    with _lock:
        _handles[handle] = entry


def submit(request, input_address, output_address, keep_alive, finisher):
    """Queues one collective (a _core.Request, built by fusecomm/_frontend/collectives.py) on
    the data at input_address (output_address: where the result goes, 0 when the engine
    allocates it); returns the engine's handle id. `keep_alive` (the tensors behind the
    addresses) lives until the handle is synchronized; `finisher(result)` turns the engine's
    result tuple (uint8 array, DeviceBuffer or None; shape; received splits) into what
    synchronize returns."""
    handle = _core.enqueue(request, input_address, output_address)
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


def in_flight(handle):
    """True while `handle` has not been synchronized to the end (a wait that a signal handler
    interrupted leaves it in flight)."""
    with _lock:
        return handle in _handles


def _forget(handle):
    with _lock:
        _handles.pop(handle, None)


def forget_all_handles():
    with _lock:
        _handles.clear()
