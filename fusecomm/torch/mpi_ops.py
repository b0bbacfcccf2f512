"""Collectives on torch tensors, with Horovod's names, arguments, defaults and return values
(horovod.torch.mpi_ops): TorchAdapter on the frontend core (fusecomm/_frontend).

Tensors reach the engine as raw data pointers; the engine keeps them alive until the handle is
synchronized. The non-async functions are autograd-aware (one autograd Function reading the
core's table of Horovod's gradient rules).
"""
import torch

from fusecomm import _engine
from fusecomm._frontend import collectives as _collectives
from fusecomm._frontend import gradients
from fusecomm._frontend.handle import Handle, poll, synchronize  # noqa: F401
from fusecomm._frontend.validate import dtype_code, resolve_op
# Basics and constants are re-exported from here, as horovod.torch.mpi_ops does.
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, OP_NAMES,
                              REDUCESCATTER, Adasum, Average, Max, Min, Product, Sum)  # noqa: F401
from fusecomm.basics import (ProcessSet, add_process_set, ccl_built, cross_rank, cross_size,
                             cuda_built, ddl_built, global_process_set, gloo_built, gloo_enabled,
                             init, is_homogeneous, is_initialized, local_rank, local_size,
                             mpi_built, mpi_enabled, mpi_threads_supported, nccl_built,
                             process_set_id, rank, remove_process_set, rocm_built, root_in_set,
                             shutdown, size, start_timeline, stop_timeline)  # noqa: F401
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


class TorchAdapter(_collectives.Adapter):
    """torch tensors for the frontend core: CPU tensors, and CUDA tensors with a CUDA build.
    Out-of-place ops read a contiguous copy of a non-contiguous input; in-place ops on one work
    on a contiguous copy and write the result back at synchronize()."""

    prefix_op_names = True

    def check(self, tensor, what):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, not {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise TypeError(f"{what} has layout {tensor.layout}; collectives take dense tensors "
                            "(for sparse gradients use sparse_allreduce_async or "
                            "DistributedOptimizer(sparse_as_dense=True))")
        code = dtype_code(_DTYPE_NAMES.get(tensor.dtype), (tensor.dtype, _SUPPORTED_DTYPES))
        device = tensor.device
        if device.type == "cpu":
            index = -1
        elif device.type == "cuda":  # a build without CUDA refuses it with a message
            index = device.index if device.index is not None else torch.cuda.current_device()
        else:
            raise ValueError(f"fusecomm cannot use tensors on device '{device}'; move them to "
                             "the CPU (or to a CUDA device with a CUDA build of fusecomm)")
        return tensor.detach(), code, index

    def contiguous(self, tensor):
        return tensor.contiguous()

    def in_place(self, target, original):
        if target.is_contiguous():
            return target, lambda result: original
        buffer = target.contiguous()

        def copy_back(result):
            with torch.no_grad():
                target.copy_(buffer)
            return original

        return buffer, copy_back

    def empty_like(self, tensor):
        return torch.empty_like(tensor, memory_format=torch.contiguous_format)

    def ptr(self, tensor):
        return tensor.data_ptr() if tensor.numel() else 0

    def stream(self, tensor, device):
        # The engine orders its work after what is queued on the caller's current stream.
        return torch.cuda.current_stream(tensor.device).cuda_stream

    def wrap(self, data, shape, like, device):
        if data is None or data.nbytes == 0:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        if isinstance(data, _engine.DeviceBuffer):
            raw = torch.as_tensor(_engine.CudaBytes(data), device=like.device)
            return raw.view(like.dtype).view(shape)
        out = torch.from_numpy(data).view(like.dtype).view(shape)
        return out if like.device.type == "cpu" else out.to(like.device)

    def received_splits(self, splits):
        return torch.tensor(list(splits), dtype=torch.int32)


_ops = _collectives.Collectives(TorchAdapter())


def _group(start, op_type, tensors, name, process_set, **kwargs):
    """One handle for a grouped operation (Horovod's); synchronize() returns the list."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("a grouped operation needs at least one tensor")
    return Handle.group(_ops.grouped(start, op_type, tensors, name, process_set, **kwargs))


# ---- asynchronous operations -------------------------------------------------------------------

def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set):
    """Starts reducing `tensor` over the ranks of the process set (default op: Average);
    the input is not modified. Returns a handle for poll()/synchronize()."""
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set):
    """In-place allreduce_async: the result replaces `tensor`'s values."""
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, in_place=True)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set):
    """In-place allreduce; returns `tensor`."""
    return _ops.allreduce(tensor, name, resolve_op(op, average), prescale_factor,
                          postscale_factor, process_set, in_place=True, wait=True)


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set,
                            in_place=False):
    """allreduce_async of a list of tensors, submitted together so the engine fuses them;
    one handle, whose synchronize() returns the list of results."""
    return _group(_ops.allreduce, ALLREDUCE, tensors, name, process_set,
                  op=resolve_op(op, average), prescale_factor=prescale_factor,
                  postscale_factor=postscale_factor, in_place=in_place)


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set):
    """In-place grouped_allreduce_async."""
    return grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                   postscale_factor, process_set, in_place=True)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set):
    """In-place grouped allreduce; returns the list of (the same) tensors."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


def sparse_allreduce_async(tensor, name, op, process_set=global_process_set):
    """Reduces a sparse COO tensor by allgathering its indices and values. Returns a handle for
    synchronize(); the result is a sparse tensor (duplicates not coalesced)."""
    scale = gradients.sparse_scale(resolve_op(op), process_set.size())
    sparse = tensor.coalesce()
    # Allgather concatenates along the first dimension, so indices travel transposed.
    indices = allgather_async(sparse.indices().t().contiguous(), name=f"{name}.indices",
                              process_set=process_set)
    values = allgather_async(sparse.values(), name=f"{name}.values", process_set=process_set)

    def combine(results):
        gathered_indices, gathered_values = results
        if scale != 1.0:
            gathered_values = gathered_values * scale
        return torch.sparse_coo_tensor(gathered_indices.t(), gathered_values, sparse.shape,
                                       check_invariants=True)

    return Handle.group([indices, values], combine)


def allgather_async(tensor, name=None, process_set=global_process_set):
    """Starts concatenating every rank's `tensor` along the first dimension (which may differ
    between ranks). Returns a handle."""
    return _ops.allgather(tensor, name, process_set)


def grouped_allgather_async(tensors, name=None, process_set=global_process_set):
    """allgather_async of a list of tensors; one handle, synchronize() returns a list."""
    return _group(_ops.allgather, ALLGATHER, tensors, name, process_set)


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set):
    """Starts sending root_rank's `tensor` to every rank of the process set; the input is not
    modified. root_rank is a global rank (a member of the process set)."""
    return _ops.broadcast(tensor, root_rank, name, process_set)


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast_async: `tensor` takes root_rank's values."""
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast; returns `tensor`."""
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True, wait=True)


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set):
    """Starts sending splits[i] rows of `tensor` (default: equal parts) to rank i of the process
    set. synchronize() returns (received rows in rank order, int32 tensor of rows received from
    each rank)."""
    return _ops.alltoall(tensor, splits, name, process_set)


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0):
    """Starts reducing `tensor` over the ranks and scattering the first dimension: rank i gets
    rows/size rows, the first rows % size ranks one more."""
    return _ops.reducescatter(tensor, name, resolve_op(op), process_set, prescale_factor,
                              postscale_factor)


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=global_process_set,
                                prescale_factor=1.0, postscale_factor=1.0):
    """reducescatter_async of a list of tensors; one handle, synchronize() returns a list."""
    return _group(_ops.reducescatter, REDUCESCATTER, tensors, name, process_set,
                  op=resolve_op(op), prescale_factor=prescale_factor,
                  postscale_factor=postscale_factor)


# ---- differentiable operations: one autograd Function, gradients from the rules table ----------

class _Spec:
    """A differentiable collective: its type, whether grouped, and its arguments."""

    __slots__ = ("op_type", "grouped", "name", "process_set", "params")

    def __init__(self, op_type, grouped, name, process_set, **params):
        self.op_type, self.grouped, self.name = op_type, grouped, name
        self.process_set, self.params = process_set, params


_STARTERS = {ALLREDUCE: _ops.allreduce, ALLGATHER: _ops.allgather, BROADCAST: _ops.broadcast,
             REDUCESCATTER: _ops.reducescatter, ALLTOALL: _ops.alltoall}


class HorovodCollective(torch.autograd.Function):
    """Any collective with Horovod's gradient (fusecomm/_frontend/gradients.py)."""

    @staticmethod
    def forward(ctx, spec, *tensors):
        ctx.spec = spec
        ctx.rows = [t.shape[0] if t.dim() else 0 for t in tensors]
        start = _STARTERS[spec.op_type]
        if spec.grouped:
            return tuple(synchronize(_group(start, spec.op_type, tensors, spec.name,
                                            spec.process_set, **spec.params)))
        # A synchronous call: this thread drives the engine (and a small all-reduce of a name
        # seen before, such as a metric averaged every epoch, rides in the negotiation's slot).
        result = start(tensors[0], name=spec.name, process_set=spec.process_set, wait=True,
                       **spec.params)
        if spec.op_type == ALLTOALL:
            ctx.received_splits = result[1]
            ctx.mark_non_differentiable(result[1])
            return result
        return result

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + tuple(_backward(ctx, grads))


def _backward(ctx, grads):
    spec, ps = ctx.spec, ctx.spec.process_set
    p = spec.params
    rule = gradients.backward_rule(spec.op_type, p.get("op", Sum), p.get("prescale_factor", 1.0),
                                   p.get("postscale_factor", 1.0), ps.size())
    if spec.op_type == ALLTOALL:
        return [alltoall(grads[0].contiguous(), splits=ctx.received_splits, process_set=ps)[0]]
    grads = [g.contiguous() for g in grads]
    if rule.collective == ALLREDUCE:
        out = grouped_allreduce(grads, op=rule.op, prescale_factor=rule.prescale,
                                postscale_factor=rule.postscale, process_set=ps)
    else:
        out = grouped_allgather(grads, process_set=ps)
    if rule.multiplier != 1:
        out = [g * rule.multiplier for g in out]
    if rule.keep == gradients.KEEP_OWN_ROWS:
        counts = allgather(torch.tensor([ctx.rows], dtype=torch.int64), process_set=ps)
        offsets = gradients.own_row_offsets(counts.tolist(), ps.rank())
        out = [g.narrow(0, o, r) for g, o, r in zip(out, offsets, ctx.rows)]
    elif rule.keep == gradients.KEEP_ON_ROOT and rank() != p["root_rank"]:
        out = [torch.zeros_like(g) for g in out]
    return out


def _apply(spec, tensors, compression=None):
    """Runs the differentiable collective, compressing around it when asked."""
    if compression is None:
        return HorovodCollective.apply(spec, *tensors)
    compressed, ctxs = zip(*[compression.compress(t) for t in tensors]) if tensors else ((), ())
    outputs = HorovodCollective.apply(spec, *compressed)
    if not spec.grouped:
        return compression.decompress(outputs, ctxs[0])
    return [compression.decompress(t, c) for t, c in zip(outputs, ctxs)]


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """Reduces `tensor` over the ranks of the process set (default op: Average) and returns a
    new tensor of the same shape and dtype. `compression` casts it for the wire (e.g.
    Compression.fp16). Differentiable."""
    return _apply(_Spec(ALLREDUCE, False, name, process_set, op=resolve_op(op, average),
                        prescale_factor=prescale_factor, postscale_factor=postscale_factor),
                  [tensor], compression)


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """allreduce of a list of tensors, fused; returns a list. Differentiable."""
    return _apply(_Spec(ALLREDUCE, True, name, process_set, op=resolve_op(op, average),
                        prescale_factor=prescale_factor, postscale_factor=postscale_factor),
                  list(tensors), compression)


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates every rank's `tensor` along the first dimension; returns a new tensor.
    Differentiable."""
    return _apply(_Spec(ALLGATHER, False, name, process_set), [tensor])


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    """allgather of a list of tensors; returns a list. Differentiable."""
    return list(_apply(_Spec(ALLGATHER, True, name, process_set), list(tensors)))


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's `tensor` on every rank as a new tensor. Differentiable."""
    return _apply(_Spec(BROADCAST, False, name, process_set, root_rank=root_rank), [tensor])


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Sends splits[i] rows of `tensor` (default: equal parts) to rank i. Returns the received
    rows concatenated in rank order and, only when `splits` was given, also an int32 tensor of
    how many rows came from each rank (Horovod's convention). Differentiable."""
    output, received_splits = _apply(_Spec(ALLTOALL, False, name, process_set, splits=splits),
                                     [tensor])
    return output if splits is None else (output, received_splits)


def reducescatter(tensor, name=None, compression=Compression.none, op=Average,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    """Reduces `tensor` over the ranks (default op: Average) and returns this rank's slice of
    the first dimension. Differentiable."""
    return _apply(_Spec(REDUCESCATTER, False, name, process_set, op=resolve_op(op),
                        prescale_factor=prescale_factor, postscale_factor=postscale_factor),
                  [tensor], compression)


def grouped_reducescatter(tensors, name=None, compression=Compression.none, op=Average,
                          process_set=global_process_set, prescale_factor=1.0,
                          postscale_factor=1.0):
    """reducescatter of a list of tensors; returns a list. Differentiable."""
    return _apply(_Spec(REDUCESCATTER, True, name, process_set, op=resolve_op(op),
                        prescale_factor=prescale_factor, postscale_factor=postscale_factor),
                  list(tensors), compression)


# ---- barrier, join ----------------------------------------------------------------------------

def barrier(process_set=global_process_set):
    """Returns once every rank of the process set has called barrier()."""
    _collectives.barrier(process_set)


def join(device=-1):
    """This rank has no more data (e.g. fewer batches than the others). Until every rank has
    joined, it takes part in the others' collectives contributing nothing: zeros to allreduces
    (Average still divides by the full size, as in Horovod), no rows to allgather and alltoall.
    Returns the rank that joined last. `device` is accepted for Horovod scripts; the engine
    makes its stand-in data itself.

    Unnamed collectives issued by the other ranks meanwhile advance their automatic names, so
    after join() name the collectives that follow (DistributedOptimizer does)."""
    return _collectives.join(global_process_set)
