"""fusecomm.optim for PyTorch: LARS, LAMB and Akiba et al.'s RMSprop->SGD warm-up as
torch.optim.Optimizers (wrap them in fusecomm.torch.DistributedOptimizer like any other), the
recipes' schedules as LRSchedulers, parameter groups without weight decay on bias/BN, label
smoothing, and batch-size control.

Bias and normalization parameters (tensors of rank <= 1) get neither the trust ratio nor weight
decay when a group's `exclude_bias_and_norm` is true (the default); `param_groups_no_decay`
builds the groups explicitly for any optimizer."""
import torch
from torch.optim.lr_scheduler import LRScheduler

from fusecomm.optim import rules, schedules
from fusecomm.optim.batch_control import BatchSizePlan, Stage  # noqa: F401  (re-exported)

LABEL_SMOOTHING = rules.LABEL_SMOOTHING


def evaluate_closure(closure):
    """torch.optim's closure convention: re-evaluate the loss with gradients enabled (step()
    itself runs under no_grad); None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def label_smoothing_loss(epsilon=LABEL_SMOOTHING, **kwargs):
    """The recipe's loss: torch's cross entropy with label smoothing (Mikami et al.)."""
    return torch.nn.CrossEntropyLoss(label_smoothing=epsilon, **kwargs)


def param_groups_no_decay(model, weight_decay):
    """Two groups: weights of rank >= 2 with weight_decay, bias/BN parameters without (Jia et
    al.). The second group is marked excluded from LARS/LAMB's trust ratio too."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if rules.is_excluded_shape(p.shape) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "exclude_from_adaptation": True}]


def _excluded(group, p):
    return group.get("exclude_from_adaptation", False) or (
        group["exclude_bias_and_norm"] and rules.is_excluded_shape(p.shape))


def _check_nonnegative(**values):
    for what, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{what} must be >= 0, not {value!r}")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017, Algorithm 1), per parameter tensor:

        local_lr = lr * eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)   (1 if a norm is 0)
        v <- momentum * v + local_lr * (g + weight_decay * w);   w <- w - v

    Excluded parameters (bias/BN) take v <- momentum * v + lr * g."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, eps=1e-9,
                 exclude_bias_and_norm=True):
        _check_nonnegative(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, eps=eps,
                                      exclude_bias_and_norm=exclude_bias_and_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if _excluded(group, p):
                    direction, local_lr = g, group["lr"]
                else:
                    wd = group["weight_decay"]
                    trust = rules.lars_trust_ratio(p.norm(), g.norm(), group["eta"], wd,
                                                   group["eps"], torch.where)
                    direction, local_lr = g.add(p, alpha=wd), group["lr"] * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(direction * local_lr)
                p.sub_(buf)
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise adaptive moments (You et al. 2019, Algorithm 2), per parameter tensor, step t:

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t)
        u = m^ / (sqrt(v^) + eps) + weight_decay * w;   w <- w - lr * ||w|| / ||u|| * u

    (phi the identity; ratio 1 if a norm is 0). Excluded parameters take u = m^ / (sqrt(v^) + eps)
    with ratio 1: Adam."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 exclude_bias_and_norm=True):
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), not {betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      exclude_bias_and_norm=exclude_bias_and_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                update = (m / (1.0 - b1 ** t)) / ((v / (1.0 - b2 ** t)).sqrt() + group["eps"])
                if _excluded(group, p):
                    p.sub_(update, alpha=group["lr"])
                    continue
                update.add_(p, alpha=group["weight_decay"])
                trust = rules.lamb_trust_ratio(p.norm(), update.norm(), torch.where)
                p.sub_(update * (group["lr"] * trust))
        return loss


class RMSpropWarmup(torch.optim.Optimizer):
    """Akiba et al.'s RMSprop warm-up handing over to momentum SGD:

        m <- mu2 m + (1 - mu2) g^2
        delta <- mu1 delta - (a + (1 - a) / (sqrt(m) + eps)) g;   w <- w + lr * delta

    with a = fusecomm.optim.akiba_sgd_weight(epoch, center, period) and epoch = steps taken /
    steps_per_epoch: RMSprop at first, momentum SGD from center + period/4 on."""

    def __init__(self, params, lr, steps_per_epoch, momentum=0.9, alpha=0.99, eps=1e-8,
                 center=10.0, period=5.0, weight_decay=0.0):
        _check_nonnegative(lr=lr, momentum=momentum, alpha=alpha, eps=eps,
                           weight_decay=weight_decay)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, not {steps_per_epoch}")
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps,
                                      center=center, period=period, weight_decay=weight_decay))
        self.steps_per_epoch = steps_per_epoch
        self.steps_taken = 0

    def sgd_weight(self):
        """alpha_SGD of the next step."""
        group = self.param_groups[0]
        return schedules.akiba_sgd_weight(self.steps_taken / self.steps_per_epoch,
                                          group["center"], group["period"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        a = self.sgd_weight()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                    state["delta"] = torch.zeros_like(p)
                m, delta = state["square_avg"], state["delta"]
                m.mul_(group["alpha"]).addcmul_(g, g, value=1.0 - group["alpha"])
                scale = a + (1.0 - a) / (m.sqrt() + group["eps"])
                delta.mul_(group["momentum"]).sub_(scale * g)
                p.add_(delta, alpha=group["lr"])
        self.steps_taken += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["steps_taken"] = self.steps_taken
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.steps_taken = state_dict.pop("steps_taken", 0)
        super().load_state_dict(state_dict)


class _ClosedFormLR(LRScheduler):
    """Each group's rate is a closed form of the scheduler's step count and the group's initial
    rate (`_rate(step, initial_lr)`), never a product of past factors."""

    def get_lr(self):
        return [self._rate(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


class WarmupDecayLR(_ClosedFormLR):
    """Gradual warm-up from start_factor * lr to lr over warmup_steps (Goyal et al.), then
    cosine or polynomial decay to end_factor * lr at total_steps (decay=None: hold lr).
    Call step() once per optimizer step (or per epoch, counting in epochs)."""

    def __init__(self, optimizer, warmup_steps, total_steps=None, start_factor=0.0,
                 end_factor=0.0, decay="cosine", power=2.0, last_epoch=-1):
        if decay is not None and total_steps is None:
            raise ValueError("total_steps is required with a decay")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.start_factor, self.end_factor = start_factor, end_factor
        self.decay, self.power = decay, power
        super().__init__(optimizer, last_epoch)

    def _rate(self, step, base):
        if self.decay is None:
            return schedules.goyal_warmup(step, self.warmup_steps, base, base * self.start_factor)
        return schedules.warmup_then_decay(step, self.warmup_steps, self.total_steps, base,
                                           base * self.start_factor, base * self.end_factor,
                                           self.decay, self.power)


class SlowStartLR(_ClosedFormLR):
    """Akiba et al.'s slow start, stepped once per epoch: the group's lr (eta_base) times 0.5,
    0.075, 0.01, 0.001 over 40/30/15/5 of 90 epochs (rescaled to total_epochs if given)."""

    def __init__(self, optimizer, total_epochs=None, stages=schedules.SLOW_START_STAGES,
                 last_epoch=-1):
        self.total_epochs, self.stages = total_epochs, stages
        super().__init__(optimizer, last_epoch)

    def _rate(self, epoch, base):
        return schedules.slow_start(epoch, base, self.stages, self.total_epochs)


class BatchSizeController:
    """Applies a BatchSizePlan to an optimizer: `start_epoch(epoch)` sets every group's rate to
    the stage's and, on a fusecomm DistributedOptimizer, backward_passes_per_step to the stage's
    accumulation; it returns the Stage, whose micro_batch and backward_passes the training loop
    uses to slice its data (plan.rank_share gives this rank's rows of a step; loss divided by
    backward_passes). `set_step(step, steps)` applies the plan's warm-up within an epoch. The
    Keras face is fusecomm.tensorflow.keras.callbacks.BatchSizeControlCallback."""

    def __init__(self, plan, optimizer):
        self.plan, self.optimizer = plan, optimizer
        self.epoch = 0

    def start_epoch(self, epoch):
        self.epoch = epoch
        stage = self.plan.at_epoch(epoch)
        if hasattr(self.optimizer, "set_backward_passes_per_step"):
            if self.optimizer.backward_passes_per_step != stage.backward_passes:
                self.optimizer.set_backward_passes_per_step(stage.backward_passes)
        elif stage.backward_passes != 1:
            raise ValueError(f"epoch {epoch} accumulates {stage.backward_passes} passes: wrap "
                             "the optimizer in fusecomm.torch.DistributedOptimizer")
        self.set_step(0, 1)
        return stage

    def set_step(self, step_in_epoch, steps_in_epoch):
        lr = self.plan.lr_at(self.epoch, step_in_epoch, steps_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
