"""DistributedOptimizer (horovod.torch.optimizer): averages gradients across ranks while
backward runs.

Each parameter's hook submits the allreduce of its gradient the moment autograd has
accumulated it, so communication overlaps the rest of backward; step() waits for the
outstanding handles, then runs the wrapped optimizer's own step."""
import functools
import warnings
import weakref
from contextlib import contextmanager

import torch

from fusecomm._engine import Adasum, Average
from fusecomm._frontend import optimizer_rules as rules
from fusecomm._frontend.validate import resolve_op
from fusecomm.basics import global_process_set
from fusecomm.torch import adasum_optimizer
from fusecomm.torch.compression import Compression
from fusecomm.torch.functions import broadcast_object
from fusecomm.torch.mpi_ops import (allreduce_async_, grouped_allreduce_async_,
                                    sparse_allreduce_async, synchronize)


def _run_hook(optimizer_ref, p, *_):
    optimizer = optimizer_ref()
    if optimizer is not None:
        optimizer._gradient_ready(p)


def _check_before_accumulate(optimizer_ref, p, grad):
    """Runs before autograd adds a new gradient into p.grad: one pass too many must fail here,
    before the write, because the pending allreduce is still reading p.grad in place."""
    optimizer = optimizer_ref()
    if optimizer is not None:
        optimizer._check_pass_allowed(p)
    return None  # the gradient itself is unchanged


def _remove_hooks(handles):
    for handle in handles:
        handle.remove()


class _DistributedOptimizer(torch.optim.Optimizer):
    """Mixed in front of the wrapped optimizer's class; never instantiated on its own."""

    def _init_distributed(self, named_parameters, compression, backward_passes_per_step, op,
                          gradient_predivide_factor, groups, sparse_as_dense, process_set,
                          local_parameters=()):
        self._compression = compression
        # Parameters each rank trains on its own (PartialDistributedOptimizer): never reduced.
        self._local_parameters = {id(p) for p in local_parameters}
        all_params = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            named_parameters = [(f"noname.group{i}.{j}", p)
                                for i, group in enumerate(self.param_groups)
                                for j, p in enumerate(group["params"])]
        if any(not isinstance(pair, tuple) or len(pair) != 2 for pair in named_parameters):
            raise ValueError("named_parameters should be a sequence of (name, parameter) "
                             "tuples, usually model.named_parameters()")
        names = [name for name, _ in named_parameters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError("parameter names in named_parameters must be unique; duplicates: "
                             + ", ".join(duplicates))
        named_ids = {id(p) for _, p in named_parameters}
        unnamed = [p for p in all_params if id(p) not in named_ids]
        if unnamed:
            raise ValueError(f"named_parameters was given, but {len(unnamed)} parameter(s) of "
                             "the optimizer are not named in it (shapes: "
                             + ", ".join(str(tuple(p.shape)) for p in unnamed) + ")")
        self._parameter_names = {p: name for name, p in named_parameters}
        self.backward_passes_per_step = backward_passes_per_step
        self._allreduce_delay = {p: self.backward_passes_per_step for p in all_params}
        self.op = op
        self.gradient_predivide_factor = gradient_predivide_factor
        self.sparse_as_dense = sparse_as_dense
        self.process_set = process_set

        self._handles = {}  # parameter or group tuple -> (handle or None, compression context)
        self._hook_handles = []
        self._accumulators = []
        self._requires_update = set()
        self._synchronized = False
        self._should_synchronize = True
        self._groups = groups
        self._p_to_group = {}
        self._group_counts = {}
        if process_set.included() and process_set.size() > 1:
            self._register_hooks()

    # -- hooks ------------------------------------------------------------------------------

    def _register_hooks(self):
        params = [p for group in self.param_groups for p in group["params"]
                  if p.requires_grad and id(p) not in self._local_parameters]
        if self._groups is not None:
            self._form_groups(params)
        # The hooks reach the optimizer through a weak reference and are removed when it is
        # collected, so re-wrapping a model's optimizer leaves no stale allreduces behind.
        this = weakref.ref(self)
        for p in params:
            self._requires_update.add(p)
            hook = functools.partial(_run_hook, this, p)
            self._hook_handles.append(
                p.register_hook(functools.partial(_check_before_accumulate, this, p)))
            if hasattr(p, "register_post_accumulate_grad_hook"):  # torch >= 2.1
                self._hook_handles.append(p.register_post_accumulate_grad_hook(hook))
            else:
                # Older torch: hook the AccumulateGrad node, which runs after p.grad is written.
                accumulator = p.expand_as(p).grad_fn.next_functions[0][0]
                self._hook_handles.append(accumulator.register_hook(hook))
                self._accumulators.append(accumulator)  # keeps the node (and its hook) alive
        weakref.finalize(self, _remove_hooks, self._hook_handles)

    def _form_groups(self, params):
        # Every rank must form the same groups in the same order: take the root's order.
        root = 0 if self.process_set.ranks is None else self.process_set.ranks[0]
        order = broadcast_object([self._parameter_names[p] for p in params], root_rank=root,
                                 name="DistributedOptimizer.parameter_order",
                                 process_set=self.process_set)
        position = {name: i for i, name in enumerate(order)}
        params = sorted(params, key=lambda p: position[self._parameter_names[p]])
        if isinstance(self._groups, list):
            ids = {id(p) for p in params}
            groups = [[p for p in group if id(p) in ids] for group in self._groups]
            grouped = {id(p) for group in groups for p in group}
            groups = [g for g in groups if g] + [[p] for p in params if id(p) not in grouped]
        else:
            groups = [g for g in rules.split_evenly(params, self._groups) if g]
        for group in map(tuple, groups):
            for p in group:
                self._p_to_group[p] = group
            self._group_counts[group] = 0

    def _check_pass_allowed(self, p):
        if self._allreduce_delay[p] <= 0:  # already submitted since the last step()
            raise AssertionError(
                "Gradients were computed more than backward_passes_per_step times before call "
                "to step(). Increase backward_passes_per_step to accumulate gradients locally.")

    def _gradient_ready(self, p):
        """p.grad has been accumulated by backward: submit its allreduce on the last pass."""
        self._check_pass_allowed(p)
        self._allreduce_delay[p] -= 1
        if self._allreduce_delay[p] > 0:
            self._handles[p] = (None, None)  # accumulating locally
            return
        if self._groups is None:
            self._handles[p] = self._allreduce_grad_async(p)
            return
        group = self._p_to_group[p]
        self._group_counts[group] += 1
        if self._group_counts[group] == len(group):
            for member in group:
                self._handles.pop(member, None)
            self._handles[group] = self._grouped_allreduce_grad_async(group)
            self._group_counts[group] = 0
        else:
            self._handles[p] = (None, None)  # waiting for the rest of its group

    # -- submission -------------------------------------------------------------------------

    def _grad_to_send(self, p):
        if p.grad is None:
            # Another rank may have a gradient for p (data-dependent forward): send zeros.
            p.grad = torch.zeros_like(p)
        if p.grad.is_sparse and self.sparse_as_dense:
            return p.grad.to_dense()
        return p.grad

    def _allreduce_grad_async(self, p):
        grad = self._grad_to_send(p)
        name = self._parameter_names[p]
        if grad.is_sparse:
            return sparse_allreduce_async(grad, f"sparse_allreduce.{name}", self.op,
                                          self.process_set), None
        compressed, ctx = self._compression.compress(grad)
        prescale, postscale = rules.reduction_scales(self.op, self.gradient_predivide_factor)
        handle = allreduce_async_(compressed, name=name, op=self.op, prescale_factor=prescale,
                                  postscale_factor=postscale, process_set=self.process_set)
        return handle, (compressed, ctx)

    def _grouped_allreduce_grad_async(self, group):
        grads = [self._grad_to_send(p) for p in group]
        if any(g.is_sparse for g in grads):
            raise ValueError("groups cannot contain parameters with sparse gradients; pass "
                             "sparse_as_dense=True")
        compressed, ctxs = zip(*[self._compression.compress(g) for g in grads])
        prescale, postscale = rules.reduction_scales(self.op, self.gradient_predivide_factor)
        handle = grouped_allreduce_async_(list(compressed),
                                          name=self._parameter_names[group[0]], op=self.op,
                                          prescale_factor=prescale, postscale_factor=postscale,
                                          process_set=self.process_set)
        return handle, list(zip(compressed, ctxs))

    def _store(self, p, output, ctx):
        """Writes an allreduced (compressed) gradient back into p.grad."""
        if ctx is None:  # sparse: the gathered indices and values
            p.grad = output.coalesce()
            return
        _, compression_ctx = ctx
        result = self._compression.decompress(output, compression_ctx)
        if p.grad.is_sparse:  # sent densely (sparse_as_dense): back to the gradient's layout
            p.grad = result.to_sparse(p.grad.sparse_dim())
        elif result is not p.grad:
            p.grad.copy_(result)

    def synchronize(self):
        """Waits for every gradient's allreduce (submitting those whose hook has not fired:
        parameters this rank did not use, partial groups, accumulating ones)."""
        if not self._requires_update:  # process set of one rank, or this rank not in it
            self._synchronized = True
            return
        done = set()
        for key in self._handles:
            done.update(key) if isinstance(key, tuple) else done.add(key)
        for p in self._requires_update - done:
            self._handles[p] = (None, None)
        submitted_groups = set()
        for key, (handle, _) in list(self._handles.items()):
            if handle is not None or isinstance(key, tuple):
                continue
            if self._groups is not None:
                # Submit the whole group so every rank uses the same names.
                group = self._p_to_group[key]
                if group not in submitted_groups:
                    for member in group:
                        self._handles.pop(member, None)
                    submitted_groups.add(group)
                    self._handles[group] = self._grouped_allreduce_grad_async(group)
            else:
                self._handles[key] = self._allreduce_grad_async(key)
        try:
            for key, (handle, ctx) in self._handles.items():
                if isinstance(key, tuple):
                    for p, output, member_ctx in zip(key, synchronize(handle), ctx):
                        self._store(p, output, member_ctx)
                else:
                    self._store(key, synchronize(handle), ctx)
        finally:
            self._handles.clear()
            self._reset_counters()
        self._synchronized = True

    def _reset_counters(self):
        for p in self._allreduce_delay:
            self._allreduce_delay[p] = self.backward_passes_per_step
        for group in self._group_counts:
            self._group_counts[group] = 0

    @contextmanager
    def skip_synchronize(self):
        """Lets step() skip synchronization, after an explicit optimizer.synchronize() (e.g. to
        clip the averaged gradients):

            optimizer.synchronize()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            with optimizer.skip_synchronize():
                optimizer.step()
        """
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if closure is not None:
            # The closure runs backward again: synchronize its gradients before they are used.
            inner = closure

            def closure():
                loss = inner()
                self.synchronize()
                return loss

        if self._should_synchronize and (closure is None or self._handles):
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() "
                              "context after optimizer.synchronize(). This can cause training "
                              "slowdown. You may want to consider using "
                              "optimizer.skip_synchronize() context if you use "
                              "optimizer.synchronize() in your code.")
            self.synchronize()
        self._synchronized = False
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        if self._handles:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but "
                                 "before optimizer.step() or optimizer.synchronize(). This is "
                                 "prohibited as it can cause a race condition.")
        return super().zero_grad(set_to_none=set_to_none)

    def set_backward_passes_per_step(self, passes):
        self.backward_passes_per_step = rules.check_backward_passes(passes)
        self._reset_counters()

    def load_state_dict(self, *args, **kwargs):
        self._handles = {}
        self._synchronized = False
        self._should_synchronize = True
        self._reset_counters()
        return super().load_state_dict(*args, **kwargs)


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0,
                         num_groups=0, groups=None, sparse_as_dense=False,
                         process_set=global_process_set):
    """Wraps a torch optimizer so that gradients are averaged (op) across the ranks of the
    process set before each step.

    named_parameters: model.named_parameters(), so ranks agree on names (recommended).
    compression: Compression.none / fp16 / bf16 for the gradients on the wire.
    backward_passes_per_step: local accumulation; allreduce on every k-th backward.
    gradient_predivide_factor: Average is applied as prescale 1/f, postscale f/size.
    groups: an int (that many fused groups) or a list of lists of parameters to allreduce as
    one grouped allreduce. num_groups: deprecated spelling of an int `groups`.
    sparse_as_dense: allreduce sparse gradients densely instead of allgathering them.

    Returns an object of a dynamic subclass of the optimizer's class, sharing its parameter
    groups, defaults and state."""
    return _wrap(optimizer, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set)


def PartialDistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                                backward_passes_per_step=1, op=Average,
                                gradient_predivide_factor=1.0, num_groups=0, groups=None,
                                sparse_as_dense=False, process_set=global_process_set,
                                local_layers=None):
    """DistributedOptimizer for a model with local layers (Horovod 0.28): the parameters of
    `local_layers` (a torch.nn.Module or a list of them) are trained by each rank on its own,
    their gradients never reduced; every other parameter is reduced as by
    DistributedOptimizer. local_layers=None: the same as DistributedOptimizer."""
    if local_layers is None:
        local_layers = []
    elif isinstance(local_layers, torch.nn.Module):
        local_layers = [local_layers]
    if not isinstance(local_layers, (list, tuple)) or \
            not all(isinstance(m, torch.nn.Module) for m in local_layers):
        raise ValueError("local_layers must be a torch.nn.Module or a list of torch.nn.Module, "
                         f"not {local_layers!r}")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    local = [p for m in local_layers for p in m.parameters()]
    stray = [tuple(p.shape) for p in local if id(p) not in optimized]
    if stray:
        raise ValueError(f"local_layers hold {len(stray)} parameter(s) the optimizer does not "
                         f"optimize (shapes: {', '.join(map(str, stray))})")
    if isinstance(groups, list):
        local_ids = {id(p) for p in local}
        if any(id(p) in local_ids for group in groups for p in group):
            raise ValueError("groups must not contain parameters of local_layers: those are "
                             "never reduced")
    return _wrap(optimizer, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set,
                 local)


def _wrap(optimizer, named_parameters, compression, backward_passes_per_step, op,
          gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set,
          local_parameters=()):
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("this optimizer is already a DistributedOptimizer")
    op = resolve_op(op)
    backward_passes_per_step = rules.check_backward_passes(backward_passes_per_step)
    if op == Adasum and process_set.size() > 1:
        # Horovod: Adasum combines each rank's own optimizer step, not the gradients.
        if process_set != global_process_set:
            raise NotImplementedError("Adasum does not support non-global process sets yet")
        if local_parameters:
            raise NotImplementedError("Adasum does not support local_layers yet")
        return adasum_optimizer.wrap(optimizer, named_parameters, compression,
                                     backward_passes_per_step)
    gradient_predivide_factor = rules.check_predivide(gradient_predivide_factor, op)
    groups = rules.check_groups(groups, num_groups,
                                is_member=lambda p: isinstance(p, torch.Tensor),
                                kind="torch.Tensor")
    cls = type(optimizer.__class__.__name__, (_DistributedOptimizer, optimizer.__class__), {})
    # Share the wrapped optimizer's whole state (parameter groups, defaults, per-parameter
    # state, hooks) instead of re-running its __init__, which may need arguments we lack.
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    wrapped._init_distributed(named_parameters, compression, backward_passes_per_step, op,
                              gradient_predivide_factor, groups, sparse_as_dense, process_set,
                              local_parameters)
    return wrapped
