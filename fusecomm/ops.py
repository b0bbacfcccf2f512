"""Collectives on NumPy arrays and on anything NumPy can view without copying (the buffer
protocol, __array_interface__, or DLPack on the CPU), and on CuPy arrays (or anything with
__cuda_array_interface__, viewed through CuPy) on the GPU with a CUDA build. Results come back
as the same kind of array: NumPy for host input, CuPy for device input
(fusecomm/_frontend/numpy_adapter.py)."""
import pickle

import numpy as np

from fusecomm._engine import ALLGATHER, ALLREDUCE, REDUCESCATTER, Average
from fusecomm._frontend import collectives as _collectives
from fusecomm._frontend.handle import poll, synchronize  # noqa: F401
from fusecomm._frontend.numpy_adapter import NumpyAdapter
from fusecomm._frontend.validate import resolve_op
from fusecomm.basics import global_process_set

_ops = _collectives.Collectives(NumpyAdapter())


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, algorithm=algorithm)


def allreduce(tensor, average=None, name=None, op=None, prescale_factor=1.0,
              postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """Reduces `tensor` over all ranks of the process set (default op: Average) and returns
    the result as a new array of the same shape and dtype."""
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, algorithm=algorithm, wait=True)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, in_place=True, algorithm=algorithm)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """In-place allreduce: the result replaces `tensor`'s contents."""
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, in_place=True, algorithm=algorithm,
                          wait=True)


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set, algorithm=None,
                            in_place=False):
    """Submits the tensors together, so the engine fuses them as one group; one handle each."""
    return _ops.grouped(_ops.allreduce, ALLREDUCE, tensors, name, process_set,
                        op=resolve_op(op, average), prescale_factor=prescale_factor,
                        postscale_factor=postscale_factor, in_place=in_place,
                        algorithm=algorithm)


def grouped_allreduce(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    handles = grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                      postscale_factor, process_set, algorithm)
    return [synchronize(h) for h in handles]


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set,
                             algorithm=None):
    """In-place grouped_allreduce_async: each result replaces its tensor's contents."""
    return grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                   postscale_factor, process_set, algorithm, in_place=True)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """In-place grouped all-reduce; returns the tensors."""
    return [synchronize(h) for h in grouped_allreduce_async_(
        tensors, average, name, op, prescale_factor, postscale_factor, process_set, algorithm)]


def allgather_async(tensor, name=None, process_set=global_process_set):
    return _ops.allgather(tensor, name, process_set)


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's tensor along the first dimension (which may differ by rank)."""
    return _ops.allgather(tensor, name, process_set, wait=True)


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    handles = _ops.grouped(_ops.allgather, ALLGATHER, tensors, name, process_set)
    return [synchronize(h) for h in handles]


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set):
    return _ops.broadcast(tensor, root_rank, name, process_set)


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's tensor on every rank."""
    return _ops.broadcast(tensor, root_rank, name, process_set, wait=True)


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set):
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast: `tensor` takes root_rank's values."""
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True, wait=True)


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0):
    return _ops.reducescatter(tensor, name, resolve_op(op), process_set, prescale_factor,
                              postscale_factor)


def reducescatter(tensor, name=None, op=Average, process_set=global_process_set,
                  prescale_factor=1.0, postscale_factor=1.0):
    """Reduces over ranks and leaves each rank a slice of the first dimension (the first
    dim % size ranks get one extra row)."""
    return _ops.reducescatter(tensor, name, resolve_op(op), process_set, prescale_factor,
                              postscale_factor, wait=True)


def grouped_reducescatter(tensors, name=None, op=Average, process_set=global_process_set,
                          prescale_factor=1.0, postscale_factor=1.0):
    handles = _ops.grouped(_ops.reducescatter, REDUCESCATTER, tensors, name, process_set,
                           op=resolve_op(op), prescale_factor=prescale_factor,
                           postscale_factor=postscale_factor)
    return [synchronize(h) for h in handles]


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set):
    return _ops.alltoall(tensor, splits, name, process_set)


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows (default: equal parts) of `tensor` to rank i. Returns the rows
    received, concatenated in rank order, and how many came from each rank."""
    return _ops.alltoall(tensor, splits, name, process_set, wait=True)


def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has called barrier()."""
    _collectives.barrier(process_set)


def join(process_set=global_process_set):
    """This rank has no more work (e.g. fewer batches than the others). Until every rank of the
    process set has joined, it takes part in the others' collectives contributing nothing:
    zeros to all-reduces (which still divide by the full size for Average, as in Horovod), no
    rows to allgather and alltoall. Returns the rank that joined last."""
    return _collectives.join(process_set)


def _pickled(obj):
    try:
        return np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - pickling raises many types; callers want one
        raise TypeError(f"object of type {type(obj).__name__} cannot be pickled: {e}") from None


def broadcast_object(obj, root_rank=0, name=None, process_set=global_process_set):
    """Pickles `obj` on root_rank and returns it, unpickled, on every rank."""
    # A fixed default name: ranks other than the root usually pass None as obj.
    name = name or "obj"
    payload = _pickled(obj)
    length = broadcast(np.array([payload.size], dtype=np.int64), root_rank,
                       name=f"broadcast_object.{name}.size", process_set=process_set)
    buffer = payload if payload.size == length[0] else np.zeros(int(length[0]), np.uint8)
    data = broadcast(buffer, root_rank, name=f"broadcast_object.{name}.data",
                     process_set=process_set)
    return pickle.loads(data.tobytes())


def allgather_object(obj, name=None, process_set=global_process_set):
    """Returns the list of every rank's `obj`, in rank order."""
    name = name or "obj"
    payload = _pickled(obj)
    sizes = allgather(np.array([payload.size], dtype=np.int64),
                      name=f"allgather_object.{name}.size", process_set=process_set)
    data = allgather(payload, name=f"allgather_object.{name}.data", process_set=process_set)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [pickle.loads(data[offsets[i]:offsets[i + 1]].tobytes()) for i in range(len(sizes))]
