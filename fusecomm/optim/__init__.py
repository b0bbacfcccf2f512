"""Large-batch training recipes of the record runs, framework-neutral (no torch, no TF here).

- Learning-rate schedules as plain functions of the step or epoch (`schedules`): the linear
  scaling rule and gradual warm-up (Goyal et al.), slow start (Akiba et al.), polynomial and
  cosine decay, and the RMSprop->SGD hand-over weight (Akiba et al.).
- The optimizers' per-layer rules (`rules`): LARS' and LAMB's trust ratios, which parameters are
  excluded from adaptation and weight decay (bias and normalization parameters).
- Batch-size control (`batch_control`, Mikami et al.): a plan that grows the global batch at
  given epochs, with the learning rate scaled together and gradient accumulation
  (`backward_passes_per_step`) once the per-rank batch outgrows memory.
- Label smoothing's recipe value and a NumPy helper.

The framework faces are `fusecomm.torch.optim` and `fusecomm.tensorflow.keras.optim`.
"""
from fusecomm.optim.batch_control import BatchSizePlan, Stage
from fusecomm.optim.rules import (LABEL_SMOOTHING, is_excluded_shape, lamb_trust_ratio,
                                  lars_trust_ratio, smooth_labels)
from fusecomm.optim.schedules import (akiba_sgd_weight, cosine_decay, goyal_warmup,
                                      linear_scaling, polynomial_decay, slow_start,
                                      warmup_then_decay)

__all__ = ["BatchSizePlan", "Stage", "LABEL_SMOOTHING", "is_excluded_shape", "lamb_trust_ratio",
           "lars_trust_ratio", "smooth_labels", "akiba_sgd_weight", "cosine_decay",
           "goyal_warmup", "linear_scaling", "polynomial_decay", "slow_start",
           "warmup_then_decay"]
