"""DistributedOptimizer(op=Adasum) (horovod.torch's _DistributedAdasumOptimizer): Adasum
combines what each rank's optimizer would do on its own, not the gradients.

step(): every rank applies the wrapped optimizer to its own (local, possibly accumulated)
gradients, takes the change of each parameter, delta = new - start, reduces the deltas with
op=Adasum, and sets every parameter to start + adasum(deltas). The wrapped optimizer's state
(momentum, Adam moments) stays each rank's own, as in Horovod."""
from contextlib import contextmanager

import torch

from fusecomm._engine import Adasum
from fusecomm.torch.mpi_ops import allreduce_async_, synchronize
from fusecomm.torch.optim import evaluate_closure


class _DistributedAdasumOptimizer:
    """Mixed in front of the wrapped optimizer's class (see wrap())."""

    def _init_adasum(self, named_parameters, compression, backward_passes_per_step):
        params = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is None:
            named_parameters = [(f"noname.{i}", p) for i, p in enumerate(params)]
        names = {}
        for name, p in named_parameters:
            if name in names.values():
                raise ValueError(f"parameter name {name!r} appears twice in named_parameters")
            names[p] = name
        missing = [tuple(p.shape) for p in params if p not in names]
        if missing:
            raise ValueError(f"named_parameters does not name {len(missing)} parameter(s) of "
                             f"the optimizer (shapes {missing})")
        self._adasum_names = names
        self._compression = compression
        self.set_backward_passes_per_step(backward_passes_per_step)

    def set_backward_passes_per_step(self, passes):
        # Gradients accumulate in .grad between steps anyway; only the count is Horovod's API.
        if int(passes) < 1:
            raise ValueError("backward_passes_per_step must be at least 1")
        self.backward_passes_per_step = int(passes)

    def synchronize(self):
        """Nothing to wait for: the reduction happens inside step()."""

    @contextmanager
    def skip_synchronize(self):
        raise AssertionError("skipping synchronization is not supported with op=Adasum")
        yield  # pragma: no cover

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        starts = [p.detach().clone() for p in params]
        super().step()
        pending = []
        for p, start in zip(params, starts):
            delta, ctx = self._compression.compress(p.detach() - start)
            delta = delta.contiguous()
            pending.append((p, start, delta, ctx, allreduce_async_(
                delta, name=f"adasum.delta.{self._adasum_names[p]}", op=Adasum)))
        for p, start, delta, ctx, handle in pending:
            reduced = self._compression.decompress(synchronize(handle), ctx)
            p.copy_(start + reduced.to(p.dtype))
        return loss


def wrap(optimizer, named_parameters, compression, backward_passes_per_step):
    cls = type(optimizer.__class__.__name__, (_DistributedAdasumOptimizer, optimizer.__class__),
               {})
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    wrapped._init_adasum(named_parameters, compression, backward_passes_per_step)
    return wrapped
