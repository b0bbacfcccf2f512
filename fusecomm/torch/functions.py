"""Model and optimizer state helpers (horovod.torch.functions)."""
import torch

from fusecomm import ops as _numpy_ops
from fusecomm.basics import global_process_set
from fusecomm.torch.mpi_ops import broadcast_async_, rank, synchronize


def broadcast_parameters(params, root_rank, process_set=global_process_set):
    """Overwrites, in place, every rank's parameters with root_rank's.

    params: model.state_dict() (a dict), model.named_parameters() (pairs) or
    model.parameters() (tensors), as a list or any other iterable. root_rank is a global rank
    (a member of the process set)."""
    if isinstance(params, dict):
        items = sorted(params.items())
    else:
        try:
            items = [p if isinstance(p, tuple) else (None, p) for p in params]
        except TypeError:
            raise ValueError(f"invalid params of type {type(params).__name__}: pass a dict or "
                             "an iterable of tensors or (name, tensor) pairs") from None
    # Submit everything first so the engine fuses, then wait.
    handles = [broadcast_async_(p, root_rank, name, process_set=process_set)
               for name, p in items]
    for handle in handles:
        synchronize(handle)


def _describe(value, param):
    """A state entry as sent by the root: tensors by shape, dtype and whether they live on
    their parameter's device (Adam's `step` stays on the CPU beside a GPU parameter); their
    values follow by broadcast. Anything else (step counters, flags) goes by value."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device == param.device)
    return ("value", value)


def _state_tensor(mine, shape, dtype, on_param_device, param):
    """This rank's tensor for a state entry the root has: its own when it matches, otherwise
    a new one on the device the root keeps it on (the parameter's, or the CPU), so the
    broadcast sees the same device on every rank."""
    if torch.is_tensor(mine) and tuple(mine.shape) == shape and mine.dtype == dtype and \
            (mine.device == param.device) == on_param_device:
        return mine
    return torch.empty(shape, dtype=dtype,
                       device=param.device if on_param_device else torch.device("cpu"))


def _create_missing_grads(optimizer):
    """Horovod's broadcast_optimizer_state leaves every trainable parameter of a fresh
    optimizer with a zero .grad (it runs a step on them), and scripts go on to use p.grad:
    give one to each parameter that has none."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and p.grad is None:
                grad = torch.zeros_like(p)
                p.grad = grad.to_sparse() if isinstance(optimizer, torch.optim.SparseAdam) \
                    else grad


def broadcast_optimizer_state(optimizer, root_rank, process_set=global_process_set):
    """Makes every rank's optimizer state (per-parameter buffers and scalars such as Adam's
    step) and options (lr, momentum, betas, ...) equal to root_rank's.

    Unlike Horovod, this does not run a zero-gradient step to create missing state (which
    changes parameters under weight decay): the root describes its state, the other ranks
    allocate what they lack (on the device the root keeps it on), the tensors are broadcast in
    place and the result is loaded. As in Horovod, a fresh optimizer's parameters are left
    with zero gradients (only where .grad is None: existing gradients are kept)."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    state_dict = optimizer.state_dict()
    if not state_dict["state"]:
        _create_missing_grads(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    is_root = rank() == root_rank
    layout = None
    if is_root:
        layout = {"param_groups": state_dict["param_groups"],
                  "state": {pid: {key: _describe(value, params[pid])
                                  for key, value in entries.items()}
                            for pid, entries in state_dict["state"].items()}}
    layout = broadcast_object(layout, root_rank, name="optimizer_state_layout",
                              process_set=process_set)

    state, tensors = {}, []
    for pid, entries in layout["state"].items():
        mine = state_dict["state"].get(pid, {})
        state[pid] = {}
        for key, (kind, *spec) in entries.items():
            if kind == "value":
                state[pid][key] = spec[0]
                continue
            tensor = _state_tensor(mine.get(key), *spec, params[pid])
            state[pid][key] = tensor
            tensors.append((f"optimizer_state.{pid}.{key}", tensor))
    broadcast_parameters(tensors, root_rank, process_set=process_set)
    if not is_root:
        _install(optimizer, params, state, layout["param_groups"])


def _install(optimizer, params, state, param_groups):
    """Makes `state` and the groups' options the optimizer's own, as they are: unlike
    load_state_dict, which would cast every state tensor to its parameter's dtype (an int16
    counter would become a float on these ranks and stay int16 on the root)."""
    if len(param_groups) != len(optimizer.param_groups):
        raise ValueError(f"the root's optimizer has {len(param_groups)} parameter groups, this "
                         f"rank's {len(optimizer.param_groups)}")
    for group, root_group in zip(optimizer.param_groups, param_groups):
        group.update({key: value for key, value in root_group.items() if key != "params"})
    for pid, p in enumerate(params):
        if pid in state:
            optimizer.state[p] = state[pid]
        else:
            optimizer.state.pop(p, None)


def broadcast_object(obj, root_rank=0, name=None, process_set=global_process_set):
    """Pickles `obj` on root_rank (a global rank) and returns it, unpickled, on every rank of
    the process set.

    The default name does not depend on `obj`, so ranks passing None (the usual pattern) agree
    with the root."""
    return _numpy_ops.broadcast_object(obj, root_rank,
                                       name=f"torch.{name or 'object'}", process_set=process_set)


def allgather_object(obj, name=None, process_set=global_process_set):
    """Returns the list of every rank's `obj` (pickled), in rank order."""
    return _numpy_ops.allgather_object(obj, name=f"torch.{name or 'object'}",
                                       process_set=process_set)
