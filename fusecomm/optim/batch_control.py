"""Batch-size control (Mikami et al.): the global batch grows at given epochs, and the learning
rate follows it by the linear scaling rule. When a rank's share of the batch no longer fits in
memory (max_rank_batch), the share is split into equal micro-batches whose gradients accumulate
locally (`backward_passes_per_step`) before the one all-reduce of the step."""
import bisect
import dataclasses

from fusecomm.optim.schedules import goyal_warmup, linear_scaling


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one epoch trains with. global_batch = ranks * micro_batch * backward_passes."""
    start_epoch: int
    global_batch: int
    rank_batch: int        # samples each rank takes per optimizer step
    micro_batch: int       # samples per forward/backward pass
    backward_passes: int   # passes accumulated per optimizer step
    lr: float              # the stage's linearly scaled rate (before warm-up)


class BatchSizePlan:
    """stages: [(start_epoch, global_batch), ...], the first starting at epoch 0.

    lr = linear_scaling(base_lr, global_batch, base_batch); with warmup_epochs > 0 the rate of
    the first stage ramps linearly from base_lr over that many epochs (Goyal et al.), so a plan
    can start large. `lr_at(epoch, step_in_epoch, steps_in_epoch)` is the rate of a step."""

    def __init__(self, stages, ranks, base_lr, base_batch, max_rank_batch=None,
                 warmup_epochs=0):
        stages = sorted((int(e), int(b)) for e, b in stages)
        if not stages or stages[0][0] != 0:
            raise ValueError(f"the first stage must start at epoch 0, got {stages}")
        if len({e for e, _ in stages}) != len(stages):
            raise ValueError(f"two stages start at the same epoch: {stages}")
        if ranks < 1:
            raise ValueError(f"ranks must be >= 1, not {ranks}")
        if max_rank_batch is not None and max_rank_batch < 1:
            raise ValueError(f"max_rank_batch must be >= 1, not {max_rank_batch}")
        self.ranks = ranks
        self.base_lr = base_lr
        self.base_batch = base_batch
        self.warmup_epochs = warmup_epochs
        self.stages = [self._stage(e, b, max_rank_batch) for e, b in stages]
        self._starts = [s.start_epoch for s in self.stages]

    def _stage(self, epoch, global_batch, max_rank_batch):
        if global_batch < 1 or global_batch % self.ranks:
            raise ValueError(f"global batch {global_batch} (epoch {epoch}) must be a positive "
                             f"multiple of the {self.ranks} ranks")
        rank_batch = global_batch // self.ranks
        passes = 1
        if max_rank_batch is not None:
            # The fewest equal micro-batches that fit.
            passes = -(-rank_batch // max_rank_batch)
            while rank_batch % passes:
                passes += 1
        return Stage(epoch, global_batch, rank_batch, rank_batch // passes, passes,
                     linear_scaling(self.base_lr, global_batch, self.base_batch))

    def at_epoch(self, epoch):
        """The stage in force during `epoch`."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, not {epoch}")
        return self.stages[bisect.bisect_right(self._starts, epoch) - 1]

    def lr_at(self, epoch, step_in_epoch=0, steps_in_epoch=1):
        stage = self.at_epoch(epoch)
        progress = epoch + step_in_epoch / max(steps_in_epoch, 1)
        return goyal_warmup(progress, self.warmup_epochs, stage.lr, self.base_lr)

    def rank_share(self, epoch, step, rank, order):
        """What `rank` trains on at `step` of `epoch`: its stage.rank_batch consecutive entries
        of the step's global batch, which is the step-th run of global_batch entries of
        `order` (the epoch's sample order, the same on every rank)."""
        stage = self.at_epoch(epoch)
        if not 0 <= rank < self.ranks:
            raise ValueError(f"rank {rank} is not one of the plan's {self.ranks} ranks")
        start = step * stage.global_batch + rank * stage.rank_batch
        return order[start:start + stage.rank_batch]

    def steps_in_epoch(self, epoch, dataset_size):
        """Optimizer steps of `epoch` over a dataset of dataset_size samples in all (the
        remainder that does not fill a global batch is dropped)."""
        steps = dataset_size // self.at_epoch(epoch).global_batch
        if steps < 1:
            raise ValueError(f"{dataset_size} samples do not fill one global batch of "
                             f"{self.at_epoch(epoch).global_batch} (epoch {epoch})")
        return steps
