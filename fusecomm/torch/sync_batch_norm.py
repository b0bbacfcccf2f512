"""Batch normalization whose batch statistics span every rank (horovod.torch.SyncBatchNorm).

Training: each rank computes its per-channel count, mean and sum of squared deviations; one
allgather brings every rank's triple and they combine exactly (Chan et al.), so ranks may hold
different numbers of samples, none included. Backward needs two per-channel sums over the
global batch: one allreduce. Works on CPU tensors (Horovod's needs CUDA).

moving_averages=False is Akiba et al.'s batch normalization without moving averages: instead of
running averages, evaluation uses the statistics of the last training batch, taken over every
rank's samples."""
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fusecomm._engine import Sum
from fusecomm.basics import global_process_set
from fusecomm.torch.mpi_ops import allgather, allreduce


def _channel_view(t, ndim):
    """Per-channel vector shaped to broadcast against an (N, C, ...) input."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, process_set):
        channels = x.shape[1]
        xc = x.to(_compute_dtype(x.dtype))
        dims = _reduce_dims(xc)
        count = xc.numel() // channels if channels else 0
        if count:
            local_mean = xc.mean(dims)
            local_m2 = ((xc - _channel_view(local_mean, xc.dim())) ** 2).sum(dims)
        else:
            local_mean = local_m2 = xc.new_zeros(channels)
        # One row per rank: [count, mean (C), M2 (C)], combined in float64.
        stats = torch.cat([torch.tensor([float(count)], dtype=torch.float64),
                           local_mean.double(), local_m2.double()]).view(1, -1)
        gathered = allgather(stats, process_set=process_set)
        counts = gathered[:, :1]
        means, m2s = gathered[:, 1:channels + 1], gathered[:, channels + 1:]
        total = float(counts.sum())
        if total <= 1:
            raise ValueError("Expected more than 1 value per channel when training, got "
                             f"{int(total)} across all ranks")
        mean = (counts * means).sum(0) / total
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        invstd = torch.rsqrt(m2 / total + eps)
        if running_mean is not None:
            with torch.no_grad():
                if momentum is None:
                    # No moving averages: the statistics that normalized this batch, so that
                    # evaluating it reproduces the training output.
                    running_mean.copy_(mean)
                    running_var.copy_(m2 / total)
                else:
                    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype),
                                                         alpha=momentum)
                    unbiased = (m2 / (total - 1)).to(running_var.dtype)
                    running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        mean, invstd = mean.to(xc.dtype), invstd.to(xc.dtype)
        xhat = (xc - _channel_view(mean, xc.dim())) * _channel_view(invstd, xc.dim())
        y = xhat
        if weight is not None:
            y = y * _channel_view(weight.to(xc.dtype), xc.dim()) \
                + _channel_view(bias.to(xc.dtype), xc.dim())
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total, ctx.process_set, ctx.has_bias = total, process_set, bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        xhat, weight, invstd = ctx.saved_tensors
        dy = grad_output.to(xhat.dtype)
        dims = _reduce_dims(dy)
        local = torch.stack([dy.sum(dims), (dy * xhat).sum(dims)])  # sum dy, sum dy * xhat
        summed = allreduce(local, op=Sum, process_set=ctx.process_set)
        sum_dy, sum_dy_xhat = summed[0], summed[1]
        scale = invstd if weight is None else invstd * weight.to(xhat.dtype)
        ndim = dy.dim()
        grad_x = _channel_view(scale, ndim) * (
            dy - _channel_view(sum_dy / ctx.total, ndim)
            - xhat * _channel_view(sum_dy_xhat / ctx.total, ndim))
        # Parameter gradients stay local: DistributedOptimizer averages them like any other.
        grad_weight = local[1].to(weight.dtype) if weight is not None and \
            ctx.needs_input_grad[1] else None
        grad_bias = local[0].to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] \
            else None
        return (grad_x.to(grad_output.dtype), grad_weight, grad_bias, None, None, None, None,
                None)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over N-dimensional input whose training statistics are computed over the
    batches of every rank in the process set, as if one process saw the whole batch.

    Arguments as torch.nn.BatchNorm*d: num_features (C of an (N, C, ...) input), eps,
    momentum (None: cumulative average), affine, track_running_stats; process_set limits the
    synchronization to a subset of ranks. Evaluation with running statistics is local.

    moving_averages=False (Akiba et al.): running_mean and running_var are not averages but the
    mean and (biased) variance of the last training batch over every rank of the set, replaced
    at every training step (momentum is ignored); evaluation normalizes with them. Put the model
    in eval mode right after the last training step (or run a few training-mode forward passes
    without optimizer steps over a batch of your choice) to fix the statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_set=global_process_set, moving_averages=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if not moving_averages and not track_running_stats:
            raise ValueError("moving_averages=False keeps the last batch's statistics for "
                             "evaluation: it needs track_running_stats=True")
        self.process_set = process_set
        self.moving_averages = moving_averages

    def extra_repr(self):
        return super().extra_repr() + ("" if self.moving_averages else ", moving_averages=False")

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or not self.track_running_stats
        track = self.training and self.track_running_stats
        if not use_batch_stats or (self.process_set.size() == 1 and self.moving_averages):
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, use_batch_stats, momentum, self.eps)
        if track and not self.moving_averages:
            momentum = None  # replace the statistics with the batch's
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, self.eps, momentum, self.process_set)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_set=global_process_set,
                               moving_averages=True):
        """Returns `module` with every torch BatchNorm layer replaced by a SyncBatchNorm that
        carries over its parameters and running statistics (moving_averages: as for
        SyncBatchNorm; layers that do not track running statistics keep batch statistics)."""
        converted = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_set,
                            moving_averages or not module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
        for child_name, child in module.named_children():
            converted.add_module(child_name,
                                 cls.convert_sync_batchnorm(child, process_set, moving_averages))
        return converted
