"""Collectives on torch tensors, with Horovod's names, arguments, defaults and return values
(horovod.torch.mpi_ops), on top of the fusecomm engine.

Tensors reach the engine as raw data pointers; the engine keeps them alive until the handle is
synchronized. Out-of-place ops read a contiguous copy of a non-contiguous input; in-place ops on
a non-contiguous tensor work on a contiguous copy and write the result back at synchronize().
The non-async functions are autograd-aware: gradients flow as in Horovod.
"""
import operator

import torch

from fusecomm import _engine
from fusecomm import ops as _numpy_ops
# Basics and constants are re-exported from here, as horovod.torch.mpi_ops does.
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, OP_NAMES,
                              REDUCESCATTER, Adasum, Average, Max, Min, Product, Sum)  # noqa: F401
from fusecomm.basics import (ProcessSet, add_process_set, ccl_built, cross_rank, cross_size,
                             cuda_built, ddl_built, global_process_set, gloo_built, gloo_enabled,
                             init, is_homogeneous, is_initialized, local_rank, local_size,
                             mpi_built, mpi_enabled, mpi_threads_supported, nccl_built,
                             process_set_id, rank, remove_process_set, rocm_built, root_in_set,
                             shutdown,
                             size, start_timeline, stop_timeline)  # noqa: F401
from fusecomm.exceptions import (CollectiveError, HorovodInternalError,  # noqa: F401
                                 NotInitializedError)
from fusecomm.torch.compression import Compression

# torch dtype -> the engine's dtype name (fusecomm/_engine.py: DTYPE_CODES).
_DTYPE_NAMES = {
    torch.uint8: "uint8", torch.int8: "int8", torch.int32: "int32", torch.int64: "int64",
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.bool: "bool", torch.int16: "int16",
}
if hasattr(torch, "uint16"):  # torch >= 2.3
    _DTYPE_NAMES[torch.uint16] = "uint16"
_SUPPORTED_DTYPES = ", ".join(str(d) for d in _DTYPE_NAMES)


# ---- Validation and submission -----------------------------------------------------------------

def _dtype_code(dtype):
    return _engine.dtype_code(_DTYPE_NAMES.get(dtype), shown=(dtype, _SUPPORTED_DTYPES))


def _device_index(tensor):
    """-1 for CPU tensors, the device index for CUDA tensors (a build without CUDA refuses them
    with a message); anything else is refused here."""
    device = tensor.device
    if device.type == "cpu":
        return -1
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    raise ValueError(f"fusecomm cannot use tensors on device '{device}'; move them to the CPU "
                     "(or to a CUDA device with a CUDA build of fusecomm)")


def _check(tensor, what="tensor"):
    """Validates a tensor and returns it detached (same memory, no autograd history)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{what} has layout {tensor.layout}; collectives take dense tensors "
                        "(for sparse gradients use sparse_allreduce_async or "
                        "DistributedOptimizer(sparse_as_dense=True))")
    _dtype_code(tensor.dtype)
    _device_index(tensor)
    return tensor.detach()


def _check_rows(tensor, op_type):
    if tensor.dim() == 0:
        raise ValueError(f"{OP_NAMES[op_type]} needs a tensor with at least one dimension")
    return tensor


class _Raw(str):
    """A name that is already complete, as given to the members of a grouped operation."""


def _op_name(op_type, name, process_set=None):
    """Horovod prefixes every name with its operation ('allreduce.<name>'), so an allreduce and
    a broadcast may share a user name; unnamed ops get a per-op (and per-set) counter."""
    if isinstance(name, _Raw):
        return str(name)
    if name is not None:
        return f"{OP_NAMES[op_type]}.{_engine.auto_name(op_type, name)}"
    return _engine.auto_name(op_type, None, process_set_id(process_set))


def _ptr(tensor):
    return tensor.data_ptr() if tensor.numel() else 0


def _stream(tensor):
    """The caller's current CUDA stream for a CUDA tensor (the engine orders its work after
    what is queued there), 0 for CPU tensors."""
    if tensor.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(tensor.device).cuda_stream


def _submit(op_type, tensor, output, name, finisher, process_set, **kwargs):
    """Queues one collective on `tensor` (contiguous) writing `output` (or an engine-allocated
    buffer when None); both stay alive until synchronize()."""
    return _engine.submit(op_type, _op_name(op_type, name, process_set),
                          _dtype_code(tensor.dtype), tensor.shape, _ptr(tensor),
                          _ptr(output) if output is not None else 0, (tensor, output), finisher,
                          device=_device_index(tensor), stream=_stream(tensor),
                          process_set_id=process_set_id(process_set), **kwargs)


def _in_place(tensor):
    """(buffer the engine writes, finisher): the tensor itself when contiguous, otherwise a
    contiguous copy whose result is copied back into the tensor at synchronize()."""
    target = _check(tensor)
    if target.is_contiguous():
        return target, lambda result: tensor
    buffer = target.contiguous()

    def finish(result):
        with torch.no_grad():
            target.copy_(buffer)
        return tensor

    return buffer, finish


def _engine_output(dtype, device):
    """Wraps an engine-allocated result (host or device bytes + shape) as a tensor without
    copying."""

    def wrap(result):
        data, shape, _, _ = result
        if data is None or data.nbytes == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        if isinstance(data, _engine.DeviceBuffer):
            raw = torch.as_tensor(_engine.CudaBytes(data), device=device)
            return raw.view(dtype).view(shape)
        out = torch.from_numpy(data).view(dtype).view(shape)
        return out if device.type == "cpu" else out.to(device)

    return wrap


def _scales(prescale_factor, postscale_factor):
    return dict(prescale=_engine.check_scale(prescale_factor, "prescale_factor"),
                postscale=_engine.check_scale(postscale_factor, "postscale_factor"))


# ---- Handles ----------------------------------------------------------------------------------

class _GroupHandle:
    """One handle for a grouped operation (Horovod returns one handle per group);
    synchronize() returns the list of results."""

    __slots__ = ("handles",)

    def __init__(self, handles):
        self.handles = list(handles)

    def __repr__(self):
        return f"GroupHandle({self.handles})"


def poll(handle):
    """True when the asynchronous operation behind `handle` has finished; synchronize() will
    then not block."""
    if isinstance(handle, _GroupHandle):
        return all(_engine.poll(h) for h in handle.handles)
    if callable(handle):  # sparse_allreduce_async's deferred result
        return True
    return _engine.poll(handle)


def synchronize(handle):
    """Waits for an asynchronous operation and returns its result: a tensor, a list of tensors
    for grouped operations, or (tensor, received_splits) for alltoall. Raises
    HorovodInternalError (CollectiveError) if the operation failed."""
    if isinstance(handle, _GroupHandle):
        results, error = [], None
        for h in handle.handles:  # wait for every member even if one failed: no stray handles
            try:
                results.append(_engine.synchronize(h))
            except Exception as e:  # noqa: BLE001 - re-raised below
                error = error or e
        if error is not None:
            raise error
        return results
    if callable(handle):
        return handle()
    return _engine.synchronize(handle)


def _grouped(submit_one, tensors, name, op_type, process_set):
    """Submits one operation per tensor under '<base>.<i>' names; one handle for all of them."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("a grouped operation needs at least one tensor")
    for i, t in enumerate(tensors):  # validate everything before anything is in flight
        _check(t, f"tensors[{i}]")
    base = _op_name(op_type, name, process_set)  # members are '<base>.<i>', prefixed once
    with _engine.group(process_set_id(process_set)):  # negotiated and fused as one
        return _GroupHandle([submit_one(t, _Raw(f"{base}.{i}")) for i, t in enumerate(tensors)])


# ---- allreduce --------------------------------------------------------------------------------

def _allreduce_async(buffer, output, finisher, name, op, prescale_factor, postscale_factor,
                     process_set):
    return _submit(ALLREDUCE, buffer, output, name, finisher, process_set, op=op,
                   **_scales(prescale_factor, postscale_factor))


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set):
    """Starts reducing `tensor` over the ranks of the process set (default op: Average);
    the input is not modified. Returns a handle for poll()/synchronize()."""
    op = _engine.resolve_op(op, average)
    source = _check(tensor).contiguous()
    output = torch.empty_like(source, memory_format=torch.contiguous_format)
    return _allreduce_async(source, output, lambda result: output, name, op, prescale_factor,
                            postscale_factor, process_set)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set):
    """In-place allreduce_async: the result replaces `tensor`'s values."""
    op = _engine.resolve_op(op, average)
    buffer, finisher = _in_place(tensor)
    return _allreduce_async(buffer, buffer, finisher, name, op, prescale_factor,
                            postscale_factor, process_set)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set):
    """In-place allreduce; returns `tensor`."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor,
                                        postscale_factor, process_set))


class HorovodAllreduce(torch.autograd.Function):
    """allreduce with a gradient: the gradient is allreduced with the same op and scales."""

    @staticmethod
    def forward(ctx, tensor, average, name, op, prescale_factor, postscale_factor, process_set):
        ctx.args = (average, op, prescale_factor, postscale_factor, process_set)
        return synchronize(allreduce_async(tensor, average, name, op, prescale_factor,
                                           postscale_factor, process_set))

    @staticmethod
    def backward(ctx, grad_output):
        average, op, prescale_factor, postscale_factor, process_set = ctx.args
        grad = allreduce(grad_output, average=average, op=op, prescale_factor=prescale_factor,
                         postscale_factor=postscale_factor, process_set=process_set)
        return grad, None, None, None, None, None, None


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """Reduces `tensor` over the ranks of the process set (default op: Average) and returns a
    new tensor of the same shape and dtype. `compression` casts it for the wire (e.g.
    Compression.fp16). Differentiable."""
    compressed, ctx = compression.compress(tensor)
    reduced = HorovodAllreduce.apply(compressed, average, name, op, prescale_factor,
                                     postscale_factor, process_set)
    return compression.decompress(reduced, ctx)


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set):
    """allreduce_async of a list of tensors, submitted together so the engine fuses them;
    one handle, whose synchronize() returns the list of results."""
    op = _engine.resolve_op(op, average)

    def one(t, member_name):
        return allreduce_async(t, None, member_name, op, prescale_factor, postscale_factor,
                               process_set)

    return _grouped(one, tensors, name, ALLREDUCE, process_set)


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set):
    """In-place grouped_allreduce_async."""
    op = _engine.resolve_op(op, average)

    def one(t, member_name):
        return allreduce_async_(t, None, member_name, op, prescale_factor, postscale_factor,
                                process_set)

    return _grouped(one, tensors, name, ALLREDUCE, process_set)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set):
    """In-place grouped allreduce; returns the list of (the same) tensors."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


class HorovodGroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, average, name, op, prescale_factor, postscale_factor, process_set, *tensors):
        ctx.args = (average, op, prescale_factor, postscale_factor, process_set)
        return tuple(synchronize(grouped_allreduce_async(
            list(tensors), average, name, op, prescale_factor, postscale_factor, process_set)))

    @staticmethod
    def backward(ctx, *grad_outputs):
        average, op, prescale_factor, postscale_factor, process_set = ctx.args
        grads = grouped_allreduce(list(grad_outputs), average=average, op=op,
                                  prescale_factor=prescale_factor,
                                  postscale_factor=postscale_factor, process_set=process_set)
        return (None,) * 6 + tuple(grads)


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """allreduce of a list of tensors, fused; returns a list. Differentiable."""
    compressed, ctxs = zip(*[compression.compress(t) for t in tensors]) if tensors else ((), ())
    reduced = HorovodGroupedAllreduce.apply(average, name, op, prescale_factor, postscale_factor,
                                            process_set, *compressed)
    return [compression.decompress(t, c) for t, c in zip(reduced, ctxs)]


def sparse_allreduce_async(tensor, name, op, process_set=global_process_set):
    """Reduces a sparse COO tensor by allgathering its indices and values. Returns a handle
    (a callable) for synchronize(); the result is a sparse tensor (duplicates not coalesced)."""
    op = _engine.resolve_op(op)
    if op not in (Sum, Average):
        raise ValueError("sparse allreduce supports only Sum and Average")
    sparse = tensor.coalesce()
    # Allgather concatenates along the first dimension, so indices travel transposed.
    indices_handle = allgather_async(sparse.indices().t().contiguous(), name=f"{name}.indices",
                                     process_set=process_set)
    values_handle = allgather_async(sparse.values(), name=f"{name}.values",
                                    process_set=process_set)

    def result():
        values = synchronize(values_handle)
        indices = synchronize(indices_handle)
        if op == Average:
            values = values / process_set.size()
        return torch.sparse_coo_tensor(indices.t(), values, sparse.shape, check_invariants=True)

    return result


# ---- allgather --------------------------------------------------------------------------------

def allgather_async(tensor, name=None, process_set=global_process_set):
    """Starts concatenating every rank's `tensor` along the first dimension (which may differ
    between ranks). Returns a handle."""
    source = _check_rows(_check(tensor).contiguous(), ALLGATHER)
    return _submit(ALLGATHER, source, None, name, _engine_output(source.dtype, source.device),
                   process_set)


def _rank_offsets(dims, process_set):
    """Where this rank's rows start in an allgather of per-rank row counts `dims` (ranks x k)."""
    return dims[:process_set.rank()].sum(dim=0)


class HorovodAllgather(torch.autograd.Function):
    """allgather with a gradient: the averaged gradient's rows that came from this rank."""

    @staticmethod
    def forward(ctx, tensor, name, process_set):
        ctx.rows, ctx.process_set = tensor.shape[0] if tensor.dim() else 0, process_set
        return synchronize(allgather_async(tensor, name, process_set))

    @staticmethod
    def backward(ctx, grad_output):
        grad = allreduce(grad_output, op=Average, process_set=ctx.process_set)
        dims = allgather(torch.tensor([[ctx.rows]], dtype=torch.int64),
                         process_set=ctx.process_set)
        offset = int(_rank_offsets(dims, ctx.process_set)[0])
        return grad.narrow(0, offset, ctx.rows), None, None


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's `tensor` along the first dimension; returns a new tensor.
    Differentiable."""
    return HorovodAllgather.apply(tensor, name, process_set)


def grouped_allgather_async(tensors, name=None, process_set=global_process_set):
    """allgather_async of a list of tensors; one handle, synchronize() returns a list."""
    return _grouped(lambda t, n: allgather_async(t, n, process_set), tensors, name, ALLGATHER,
                    process_set)


class HorovodGroupedAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, process_set, *tensors):
        ctx.rows = [t.shape[0] if t.dim() else 0 for t in tensors]
        ctx.process_set = process_set
        return tuple(synchronize(grouped_allgather_async(list(tensors), name, process_set)))

    @staticmethod
    def backward(ctx, *grad_outputs):
        grads = grouped_allreduce(list(grad_outputs), op=Average, process_set=ctx.process_set)
        dims = allgather(torch.tensor([ctx.rows], dtype=torch.int64), process_set=ctx.process_set)
        offsets = _rank_offsets(dims, ctx.process_set).tolist()
        return (None, None) + tuple(g.narrow(0, o, r)
                                    for g, o, r in zip(grads, offsets, ctx.rows))


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    """allgather of a list of tensors; returns a list. Differentiable."""
    return list(HorovodGroupedAllgather.apply(name, process_set, *tensors))


# ---- broadcast --------------------------------------------------------------------------------

def _broadcast_async(buffer, output, finisher, root_rank, name, process_set):
    return _submit(BROADCAST, buffer, output, name, finisher, process_set,
                   root=root_in_set(root_rank, process_set))


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set):
    """Starts sending root_rank's `tensor` to every rank of the process set; the input is not
    modified. root_rank is a global rank (a member of the process set)."""
    source = _check(tensor).contiguous()
    output = torch.empty_like(source, memory_format=torch.contiguous_format)
    return _broadcast_async(source, output, lambda result: output, root_rank, name, process_set)


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast_async: `tensor` takes root_rank's values."""
    buffer, finisher = _in_place(tensor)
    return _broadcast_async(buffer, buffer, finisher, root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast; returns `tensor`."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


class HorovodBroadcast(torch.autograd.Function):
    """broadcast with a gradient: the averaged gradient on the root, zero elsewhere."""

    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root_rank, ctx.process_set = root_rank, process_set
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))

    @staticmethod
    def backward(ctx, grad_output):
        grad = allreduce(grad_output, op=Average, process_set=ctx.process_set)
        if rank() != ctx.root_rank:
            grad = torch.zeros_like(grad)
        return grad, None, None, None


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's `tensor` on every rank as a new tensor. Differentiable."""
    return HorovodBroadcast.apply(tensor, root_rank, name, process_set)


# ---- alltoall ---------------------------------------------------------------------------------

def _split_list(splits):
    """splits as a list of ints. Like Horovod (whose engine answers 'alltoall expects splits to
    contain 32-bit integer elements' / 'a 1D splits tensor' with a ValueError), anything that is
    not a 1-D sequence of integers is a ValueError."""
    if splits is None:
        return None
    if isinstance(splits, torch.Tensor):
        if splits.dim() != 1 or splits.dtype.is_floating_point or splits.dtype.is_complex \
                or splits.dtype == torch.bool:
            raise ValueError("alltoall expects splits to be a 1-D tensor of integers, not a "
                             f"{splits.dim()}-D tensor of {splits.dtype}")
        return [int(s) for s in splits.tolist()]
    try:
        values = list(splits)
        if any(isinstance(s, bool) for s in values):
            raise TypeError
        return [operator.index(s) for s in values]
    except TypeError:
        raise ValueError(f"alltoall expects splits to be a 1-D sequence of integers, not "
                         f"{splits!r}") from None


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set):
    """Starts sending splits[i] rows of `tensor` (default: equal parts) to rank i of the process
    set. synchronize() returns (received rows in rank order, int32 tensor of rows received from
    each rank)."""
    source = _check_rows(_check(tensor).contiguous(), ALLTOALL)
    wrap = _engine_output(source.dtype, source.device)

    def finish(result):
        return wrap(result), torch.tensor(list(result[2]), dtype=torch.int32)

    return _submit(ALLTOALL, source, None, name, finish, process_set,
                   splits=_split_list(splits))


class HorovodAlltoall(torch.autograd.Function):
    """alltoall with a gradient: the gradient goes back with the splits that were received."""

    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        output, received_splits = synchronize(alltoall_async(tensor, splits, name, process_set))
        ctx.received_splits, ctx.process_set = received_splits, process_set
        ctx.mark_non_differentiable(received_splits)
        return output, received_splits

    @staticmethod
    def backward(ctx, grad_output, grad_splits):
        grad, _ = alltoall(grad_output.contiguous(), splits=ctx.received_splits,
                           process_set=ctx.process_set)
        return grad, None, None, None


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows of `tensor` (default: equal parts) to rank i. Returns the received
    rows concatenated in rank order and, only when `splits` was given, also an int32 tensor of
    how many rows came from each rank (Horovod's convention). Differentiable."""
    output, received_splits = HorovodAlltoall.apply(tensor, splits, name, process_set)
    return output if splits is None else (output, received_splits)


# ---- reducescatter ----------------------------------------------------------------------------

def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0):
    """Starts reducing `tensor` over the ranks and scattering the first dimension: rank i gets
    rows/size rows, the first rows % size ranks one more."""
    op = _engine.resolve_op(op)
    source = _check_rows(_check(tensor).contiguous(), REDUCESCATTER)
    return _submit(REDUCESCATTER, source, None, name,
                   _engine_output(source.dtype, source.device), process_set, op=op,
                   **_scales(prescale_factor, postscale_factor))


def _reducescatter_grad_scale(op, process_set, prescale_factor, postscale_factor):
    """Horovod's gradient of reducescatter is the allgathered gradient times size for Sum
    (times 1 for Average), times the pre/post scale factors."""
    if op not in (Sum, Average):
        raise NotImplementedError("the gradient of reducescatter is defined for Sum and "
                                  "Average only")
    return (process_set.size() if op == Sum else 1) * prescale_factor * postscale_factor


class HorovodReducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name, op, process_set, prescale_factor, postscale_factor):
        ctx.args = (_engine.resolve_op(op), process_set, prescale_factor, postscale_factor)
        return synchronize(reducescatter_async(tensor, name, op, process_set, prescale_factor,
                                               postscale_factor))

    @staticmethod
    def backward(ctx, grad_output):
        op, process_set, prescale_factor, postscale_factor = ctx.args
        scale = _reducescatter_grad_scale(op, process_set, prescale_factor, postscale_factor)
        grad = allgather(grad_output.contiguous(), process_set=process_set)
        return (grad * scale if scale != 1 else grad), None, None, None, None, None


def reducescatter(tensor, name=None, compression=Compression.none, op=Average,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    """Reduces `tensor` over the ranks (default op: Average) and returns this rank's slice of
    the first dimension. Differentiable."""
    compressed, ctx = compression.compress(tensor)
    reduced = HorovodReducescatter.apply(compressed, name, op, process_set, prescale_factor,
                                         postscale_factor)
    return compression.decompress(reduced, ctx)


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=global_process_set,
                                prescale_factor=1.0, postscale_factor=1.0):
    """reducescatter_async of a list of tensors; one handle, synchronize() returns a list."""
    op = _engine.resolve_op(op)

    def one(t, member_name):
        return reducescatter_async(t, member_name, op, process_set, prescale_factor,
                                   postscale_factor)

    return _grouped(one, tensors, name, REDUCESCATTER, process_set)


class HorovodGroupedReducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, op, process_set, prescale_factor, postscale_factor, *tensors):
        ctx.args = (_engine.resolve_op(op), process_set, prescale_factor, postscale_factor)
        return tuple(synchronize(grouped_reducescatter_async(
            list(tensors), name, op, process_set, prescale_factor, postscale_factor)))

    @staticmethod
    def backward(ctx, *grad_outputs):
        op, process_set, prescale_factor, postscale_factor = ctx.args
        scale = _reducescatter_grad_scale(op, process_set, prescale_factor, postscale_factor)
        grads = grouped_allgather([g.contiguous() for g in grad_outputs], process_set=process_set)
        return (None,) * 5 + tuple(g * scale if scale != 1 else g for g in grads)


def grouped_reducescatter(tensors, name=None, compression=Compression.none, op=Average,
                          process_set=global_process_set, prescale_factor=1.0,
                          postscale_factor=1.0):
    """reducescatter of a list of tensors; returns a list. Differentiable."""
    compressed, ctxs = zip(*[compression.compress(t) for t in tensors]) if tensors else ((), ())
    reduced = HorovodGroupedReducescatter.apply(name, op, process_set, prescale_factor,
                                                postscale_factor, *compressed)
    return [compression.decompress(t, c) for t, c in zip(reduced, ctxs)]


# ---- barrier, join ----------------------------------------------------------------------------

def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has called barrier()."""
    empty = torch.empty(0, dtype=torch.uint8)
    synchronize(_submit(BARRIER, empty, None, None, lambda result: None, process_set))


def join(device=-1):
    """This rank has no more data (e.g. fewer batches than the others). Until every rank has
    joined, it takes part in the others' collectives contributing nothing: zeros to allreduces
    (Average still divides by the full size, as in Horovod), no rows to allgather and alltoall.
    Returns the rank that joined last. `device` is accepted for Horovod scripts; the engine
    makes its stand-in data itself.

    Unnamed collectives issued by the other ranks meanwhile advance their automatic names, so
    after join() name the collectives that follow (DistributedOptimizer does)."""
    return _numpy_ops.join()
