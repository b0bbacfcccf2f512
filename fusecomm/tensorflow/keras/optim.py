"""fusecomm.optim for Keras 3: LARS, LAMB and Akiba et al.'s RMSprop->SGD warm-up as
keras.optimizers.Optimizers (build / update_step / get_config, so they save and load, and
DistributedOptimizer wraps them like any other), the recipes' schedules as serializable
LearningRateSchedules, and label smoothing's loss.

Weight decay here is the papers' coupled decay (`weight_decay_rate`, inside the trust ratio),
not Keras' decoupled `weight_decay`. Variables of rank <= 1 (bias, normalization scale and
shift; `exclude_bias_and_norm`) and those passed to Keras' own `exclude_from_weight_decay()`
get neither the trust ratio nor weight decay."""
import types

import keras
from keras import ops

from fusecomm.optim import rules, schedules

LABEL_SMOOTHING = rules.LABEL_SMOOTHING
# The schedules' element-wise functions on backend tensors (a step tensor inside a graph).
_KERAS_MATH = types.SimpleNamespace(where=ops.where, minimum=ops.minimum, maximum=ops.maximum,
                                    cos=ops.cos, exp=ops.exp)
_serializable = keras.saving.register_keras_serializable(package="fusecomm")


def label_smoothing_loss(epsilon=LABEL_SMOOTHING, from_logits=False, **kwargs):
    """The recipe's loss (Mikami et al.): categorical cross entropy on one-hot targets with
    label smoothing (Keras' sparse cross entropy has no label_smoothing)."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=epsilon,
                                                from_logits=from_logits, **kwargs)


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


class _LayerwiseOptimizer(keras.optimizers.Optimizer):
    """What LARS, LAMB and RMSpropWarmup share: coupled weight decay, the exclusion rule, and
    their hyper-parameters in get_config (from_config is Keras' cls(**config))."""

    _hyper = ()  # names of the subclass's own constructor arguments

    def __init__(self, learning_rate, weight_decay_rate, exclude_bias_and_norm, name, **kwargs):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(f"{type(self).__name__} decays weights inside its update: pass "
                             "weight_decay_rate, not Keras' decoupled weight_decay")
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not weight_decay_rate >= 0:
            raise ValueError(f"weight_decay_rate must be >= 0, not {weight_decay_rate!r}")
        self.weight_decay_rate = weight_decay_rate
        self.exclude_bias_and_norm = exclude_bias_and_norm

    def _excluded(self, variable):
        return (self.exclude_bias_and_norm and rules.is_excluded_shape(variable.shape)) or \
            not self._use_weight_decay(variable)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in
                       self._hyper + ("weight_decay_rate", "exclude_bias_and_norm")})
        return config


@_serializable
class LARS(_LayerwiseOptimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017, Algorithm 1), per variable:

        local_lr = lr * eta * ||w|| / (||g|| + wd * ||w|| + epsilon)   (1 if a norm is 0)
        v <- momentum * v + local_lr * (g + wd * w);   w <- w - v

    Excluded variables take v <- momentum * v + lr * g."""

    _hyper = ("momentum", "eta", "epsilon")

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay_rate=0.0, eta=0.001,
                 epsilon=1e-9, exclude_bias_and_norm=True, name="lars", **kwargs):
        super().__init__(learning_rate, weight_decay_rate, exclude_bias_and_norm, name, **kwargs)
        self.momentum, self.eta, self.epsilon = momentum, eta, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._velocities = self.add_optimizer_variables(var_list, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]
        if self._excluded(variable):
            step = lr * g
        else:
            trust = rules.lars_trust_ratio(_norm(variable), _norm(g), self.eta,
                                           self.weight_decay_rate, self.epsilon, ops.where)
            step = (lr * ops.cast(trust, variable.dtype)) * (g + self.weight_decay_rate * variable)
        self.assign(v, self.momentum * v + step)
        self.assign_sub(variable, v)


@_serializable
class LAMB(_LayerwiseOptimizer):
    """Layer-wise adaptive moments (You et al. 2019, Algorithm 2), per variable, step t:

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t)
        u = m^ / (sqrt(v^) + epsilon) + wd * w;   w <- w - lr * ||w|| / ||u|| * u

    (phi the identity; ratio 1 if a norm is 0). Excluded variables take Adam's step, no decay."""

    _hyper = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                 weight_decay_rate=0.01, exclude_bias_and_norm=True, name="lamb", **kwargs):
        super().__init__(learning_rate, weight_decay_rate, exclude_bias_and_norm, name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        t = ops.cast(self.iterations + 1, variable.dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign(m, self.beta_1 * m + (1.0 - self.beta_1) * g)
        self.assign(v, self.beta_2 * v + (1.0 - self.beta_2) * ops.square(g))
        # convert_to_tensor, not cast: casting a Python float goes through float32.
        m_hat = m / (1.0 - ops.power(ops.convert_to_tensor(self.beta_1, variable.dtype), t))
        v_hat = v / (1.0 - ops.power(ops.convert_to_tensor(self.beta_2, variable.dtype), t))
        update = m_hat / (ops.sqrt(v_hat) + self.epsilon)
        if self._excluded(variable):
            self.assign_sub(variable, lr * update)
            return
        update = update + self.weight_decay_rate * variable
        trust = rules.lamb_trust_ratio(_norm(variable), _norm(update), ops.where)
        self.assign_sub(variable, (lr * ops.cast(trust, variable.dtype)) * update)


@_serializable
class RMSpropWarmup(_LayerwiseOptimizer):
    """Akiba et al.'s RMSprop warm-up handing over to momentum SGD:

        m <- rho m + (1 - rho) g^2;  delta <- momentum delta - (a + (1 - a)/(sqrt(m) + eps)) g
        w <- w + lr * delta

    a = fusecomm.optim.akiba_sgd_weight(iterations / steps_per_epoch, center, period). Weight
    decay (coupled, added to g) applies to variables that are not excluded."""

    _hyper = ("steps_per_epoch", "momentum", "rho", "epsilon", "center", "period")

    def __init__(self, learning_rate=0.1, steps_per_epoch=1, momentum=0.9, rho=0.99,
                 epsilon=1e-8, center=10.0, period=5.0, weight_decay_rate=0.0,
                 exclude_bias_and_norm=True, name="rmsprop_warmup", **kwargs):
        super().__init__(learning_rate, weight_decay_rate, exclude_bias_and_norm, name, **kwargs)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, not {steps_per_epoch}")
        self.steps_per_epoch, self.momentum, self.rho = steps_per_epoch, momentum, rho
        self.epsilon, self.center, self.period = epsilon, center, period

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._square_avgs, self._deltas = self.add_optimizer_variables(
            var_list, ["square_avg", "delta"])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if not self._excluded(variable):
            g = g + self.weight_decay_rate * variable
        epoch = ops.cast(self.iterations, variable.dtype) / self.steps_per_epoch
        a = ops.cast(schedules.akiba_sgd_weight(epoch, self.center, self.period, _KERAS_MATH),
                     variable.dtype)
        index = self._get_variable_index(variable)
        m, delta = self._square_avgs[index], self._deltas[index]
        self.assign(m, self.rho * m + (1.0 - self.rho) * ops.square(g))
        scale = a + (1.0 - a) / (ops.sqrt(m) + self.epsilon)
        self.assign(delta, self.momentum * delta - scale * g)
        self.assign_add(variable, lr * delta)


class _ClosedForm(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule whose config is its constructor's arguments (`_args`)."""

    _args = ()

    def get_config(self):
        return {k: getattr(self, k) for k in self._args}


@_serializable
class WarmupDecay(_ClosedForm):
    """Gradual warm-up from start_lr to peak_lr over warmup_steps (Goyal et al.), then cosine or
    polynomial decay to end_lr at total_steps (decay=None: hold peak_lr)."""

    _args = ("peak_lr", "warmup_steps", "total_steps", "start_lr", "end_lr", "decay", "power")

    def __init__(self, peak_lr, warmup_steps, total_steps=None, start_lr=0.0, end_lr=0.0,
                 decay="cosine", power=2.0):
        if decay is not None and total_steps is None:
            raise ValueError("total_steps is required with a decay")
        self.peak_lr, self.warmup_steps, self.total_steps = peak_lr, warmup_steps, total_steps
        self.start_lr, self.end_lr, self.decay, self.power = start_lr, end_lr, decay, power

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.decay is None:
            return schedules.goyal_warmup(step, self.warmup_steps, self.peak_lr, self.start_lr,
                                          _KERAS_MATH)
        return schedules.warmup_then_decay(step, self.warmup_steps, self.total_steps,
                                           self.peak_lr, self.start_lr, self.end_lr, self.decay,
                                           self.power, _KERAS_MATH)


@_serializable
class SlowStart(_ClosedForm):
    """Akiba et al.'s slow start on optimizer steps: base_lr times 0.5, 0.075, 0.01, 0.001 over
    40/30/15/5 of 90 epochs (rescaled to total_epochs if given)."""

    _args = ("base_lr", "steps_per_epoch", "total_epochs", "stages")

    def __init__(self, base_lr, steps_per_epoch, total_epochs=None,
                 stages=schedules.SLOW_START_STAGES):
        self.base_lr, self.steps_per_epoch = base_lr, steps_per_epoch
        self.total_epochs = total_epochs
        self.stages = tuple(tuple(s) for s in stages)

    def __call__(self, step):
        epoch = ops.cast(step, "float32") / self.steps_per_epoch
        return schedules.slow_start(epoch, self.base_lr, self.stages, self.total_epochs,
                                    _KERAS_MATH)
