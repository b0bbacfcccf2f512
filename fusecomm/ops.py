"""Collectives on NumPy arrays and on anything NumPy can view without copying (the buffer
protocol, __array_interface__, or DLPack on the CPU), and on CuPy arrays (or anything with
__cuda_array_interface__, viewed through CuPy) on the GPU with a CUDA build. Results come back
as the same kind of array: NumPy for host input, CuPy for device input."""
import pickle

import numpy as np

from fusecomm import _engine
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, JOIN,
                              REDUCESCATTER)
from fusecomm._engine import Average, Sum
from fusecomm.basics import global_process_set, process_set_id, root_in_set


def _cupy():
    try:
        import cupy
    except ImportError:
        raise TypeError("device arrays (__cuda_array_interface__) are handled through CuPy; "
                        "install cupy (e.g. cupy-cuda13x)") from None
    return cupy


def _is_device_array(tensor):
    return hasattr(tensor, "__cuda_array_interface__") and not isinstance(tensor, np.ndarray)


def _as_array(tensor, what="tensor"):
    if _is_device_array(tensor):
        array = _cupy().asarray(tensor)  # no copy: a view of the same device memory
        _engine.dtype_code(array.dtype.name)
        if not array.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous (use cupy.ascontiguousarray)")
        return array
    if isinstance(tensor, np.ndarray):
        array = tensor
    elif hasattr(tensor, "__dlpack__") and not hasattr(tensor, "__array_interface__"):
        try:
            array = np.from_dlpack(tensor)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(f"{what} cannot be read on the CPU through DLPack: {e}") from None
    else:
        try:
            array = np.asarray(tensor)
        except Exception as e:  # noqa: BLE001 - anything NumPy refuses is a type error here
            raise TypeError(f"{what} must be an array, not {type(tensor).__name__}: {e}") from None
    _engine.dtype_code(array.dtype.name)  # TypeError naming the supported dtypes
    if not array.dtype.isnative:
        raise TypeError(f"{what} has non-native byte order ({array.dtype.str}); convert it with "
                        "array.astype(array.dtype.newbyteorder('='))")
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    return array


def _writable(array, what="tensor"):
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        raise ValueError(f"{what} is read-only; an in-place collective needs a writable array")
    return array


def _ptr(array):
    if not array.size:
        return 0
    if isinstance(array, np.ndarray):
        return array.__array_interface__["data"][0]
    return array.data.ptr


def _empty_like(array):
    if isinstance(array, np.ndarray):
        return np.empty_like(array)
    with array.device:  # CuPy allocates on the current device, not the array's
        return _cupy().empty_like(array)


def _device_and_stream(array):
    """(-1, 0) for host arrays; a CuPy array's device and the current CuPy stream."""
    if isinstance(array, np.ndarray):
        return -1, 0
    return array.device.id, _cupy().cuda.get_current_stream().ptr


def _engine_output(dtype, device=-1):
    """Finisher for outputs the engine allocates (allgather, reducescatter, alltoall)."""

    def finish(result):
        data, shape, splits, _ = result
        if isinstance(data, _engine.DeviceBuffer) or device >= 0:
            cupy = _cupy()
            with cupy.cuda.Device(device):
                raw = (cupy.asarray(_engine.CudaBytes(data)) if data is not None and data.nbytes
                       else cupy.empty(0, cupy.uint8))
                out = raw.view(dtype).reshape(shape)
        else:
            out = (data if data is not None else np.empty(0, np.uint8)).view(dtype).reshape(shape)
        return out, np.asarray(splits, dtype=np.int32)

    return finish


def _submit(op_type, array, output, name, finisher, **kwargs):
    ps = kwargs.pop("process_set", global_process_set)
    ps_id = process_set_id(ps)
    device, stream = _device_and_stream(array)
    return _engine.submit(op_type, _engine.auto_name(op_type, name, ps_id),
                          _engine.dtype_code(array.dtype.name), array.shape, _ptr(array),
                          _ptr(output) if output is not None else 0, (array, output), finisher,
                          process_set_id=ps_id, device=device, stream=stream, **kwargs)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    array = _as_array(tensor)
    output = _empty_like(array)
    return _allreduce_into(array, output, average, name, op, prescale_factor, postscale_factor,
                           process_set, algorithm)


def _allreduce_into(array, output, average, name, op, prescale_factor, postscale_factor,
                    process_set, algorithm):
    op = _engine.resolve_op(op, average)
    return _submit(ALLREDUCE, array, output, name, lambda result: output, op=op,
                   prescale=_engine.check_scale(prescale_factor, "prescale_factor"),
                   postscale=_engine.check_scale(postscale_factor, "postscale_factor"),
                   algorithm=algorithm, process_set=process_set)


def allreduce(tensor, average=None, name=None, op=None, prescale_factor=1.0,
              postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """Reduces `tensor` over all ranks of the process set (default op: Average) and returns
    the result as a new array of the same shape and dtype."""
    return synchronize(allreduce_async(tensor, average, name, op, prescale_factor,
                                       postscale_factor, process_set, algorithm))


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    array = _writable(_as_array(tensor))
    return _allreduce_into(array, array, average, name, op, prescale_factor, postscale_factor,
                           process_set, algorithm)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """In-place allreduce: the result replaces `tensor`'s contents."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor,
                                        postscale_factor, process_set, algorithm))


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """Submits the tensors together, so the engine fuses them as one group; one handle each."""
    return _grouped_allreduce(allreduce_async, tensors, average, name, op, prescale_factor,
                              postscale_factor, process_set, algorithm)


def _grouped(op_type, tensors, name, process_set, submit_one):
    """Submits submit_one(tensor, member_name) for every tensor as one group: members are
    '<base>.<i>', the base taken from the process set's own counter when unnamed (a group on a
    set that some ranks are not in must not shift the global names)."""
    tensors = list(tensors)
    ps_id = process_set_id(process_set)
    base = _engine.auto_name(op_type, name, ps_id)
    with _engine.group(ps_id):
        return [submit_one(t, f"{base}.{i}") for i, t in enumerate(tensors)]


def _grouped_allreduce(submit_one, tensors, average, name, op, prescale_factor,
                       postscale_factor, process_set, algorithm):
    return _grouped(ALLREDUCE, tensors, name, process_set,
                    lambda t, member: submit_one(t, average, member, op, prescale_factor,
                                                 postscale_factor, process_set, algorithm))


def grouped_allreduce(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    handles = grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                      postscale_factor, process_set, algorithm)
    return [synchronize(h) for h in handles]


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set,
                             algorithm=None):
    """In-place grouped_allreduce_async: each result replaces its tensor's contents."""
    return _grouped_allreduce(allreduce_async_, tensors, average, name, op, prescale_factor,
                              postscale_factor, process_set, algorithm)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set, algorithm=None):
    """In-place grouped all-reduce; returns the tensors."""
    return [synchronize(h) for h in grouped_allreduce_async_(
        tensors, average, name, op, prescale_factor, postscale_factor, process_set, algorithm)]


def allgather_async(tensor, name=None, process_set=global_process_set):
    array = _as_array(tensor)
    if array.ndim == 0:
        raise ValueError("allgather needs a tensor with at least one dimension")
    finish = _engine_output(array.dtype, _device_and_stream(array)[0])
    return _submit(ALLGATHER, array, None, name, lambda r: finish(r)[0], process_set=process_set)


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's tensor along the first dimension (which may differ by rank)."""
    return synchronize(allgather_async(tensor, name, process_set))


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    handles = _grouped(ALLGATHER, tensors, name, process_set,
                       lambda t, member: allgather_async(t, member, process_set))
    return [synchronize(h) for h in handles]


def _broadcast_into(array, output, root_rank, name, process_set):
    return _submit(BROADCAST, array, output, name, lambda result: output,
                   root=root_in_set(root_rank, process_set), process_set=process_set)


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set):
    array = _as_array(tensor)
    return _broadcast_into(array, _empty_like(array), root_rank, name, process_set)


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's tensor on every rank."""
    return synchronize(broadcast_async(tensor, root_rank, name, process_set))


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set):
    array = _writable(_as_array(tensor))
    return _broadcast_into(array, array, root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast: `tensor` takes root_rank's values."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0):
    array = _as_array(tensor)
    if array.ndim == 0:
        raise ValueError("reducescatter needs a tensor with at least one dimension")
    op = _engine.resolve_op(op)
    finish = _engine_output(array.dtype, _device_and_stream(array)[0])
    return _submit(REDUCESCATTER, array, None, name, lambda r: finish(r)[0], op=op,
                   prescale=_engine.check_scale(prescale_factor, "prescale_factor"),
                   postscale=_engine.check_scale(postscale_factor, "postscale_factor"),
                   process_set=process_set)


def reducescatter(tensor, name=None, op=Average, process_set=global_process_set,
                  prescale_factor=1.0, postscale_factor=1.0):
    """Reduces over ranks and leaves each rank a slice of the first dimension (the first
    dim % size ranks get one extra row)."""
    return synchronize(reducescatter_async(tensor, name, op, process_set, prescale_factor,
                                           postscale_factor))


def grouped_reducescatter(tensors, name=None, op=Average, process_set=global_process_set,
                          prescale_factor=1.0, postscale_factor=1.0):
    handles = _grouped(REDUCESCATTER, tensors, name, process_set,
                       lambda t, member: reducescatter_async(t, member, op, process_set,
                                                             prescale_factor, postscale_factor))
    return [synchronize(h) for h in handles]


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set):
    array = _as_array(tensor)
    if array.ndim == 0:
        raise ValueError("alltoall needs a tensor with at least one dimension")
    split_list = None
    if splits is not None:
        split_array = np.asarray(splits)
        if split_array.ndim != 1 or split_array.dtype.kind not in "iu":
            raise TypeError("splits must be a 1-D sequence of integers")
        split_list = [int(s) for s in split_array]
    finish = _engine_output(array.dtype, _device_and_stream(array)[0])
    return _submit(ALLTOALL, array, None, name, finish, splits=split_list,
                   process_set=process_set)


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows (default: equal parts) of `tensor` to rank i. Returns the rows
    received, concatenated in rank order, and how many came from each rank."""
    return synchronize(alltoall_async(tensor, splits, name, process_set))


def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has called barrier()."""
    empty = np.empty(0, np.uint8)
    synchronize(_submit(BARRIER, empty, None, None, lambda r: None, process_set=process_set))


def join(process_set=global_process_set):
    """This rank has no more work (e.g. fewer batches than the others). Until every rank of the
    process set has joined, it takes part in the others' collectives contributing nothing:
    zeros to all-reduces (which still divide by the full size for Average, as in Horovod), no
    rows to allgather and alltoall. Returns the rank that joined last."""
    empty = np.empty(0, np.uint8)
    return synchronize(_submit(JOIN, empty, None, "join", lambda r: r[3],
                               process_set=process_set))


def poll(handle):
    return _engine.poll(handle)


def synchronize(handle):
    return _engine.synchronize(handle)


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
