"""Learning-rate schedules of the large-batch recipes as plain functions of the step or epoch.

Each is a closed form in the step (or epoch; fractional values are fine). On Python floats by
default; `xp` swaps in a framework's element-wise functions (the Keras face passes keras.ops, so
its LearningRateSchedules evaluate the same formulas on a step tensor inside a graph)."""
import math
import types

# The element-wise functions the schedules use, on Python floats.
PYTHON_MATH = types.SimpleNamespace(where=lambda c, a, b: a if c else b, minimum=min,
                                    maximum=max, cos=math.cos, exp=math.exp)


def _check_positive(value, what):
    if not value > 0:
        raise ValueError(f"{what} must be positive, not {value!r}")


def linear_scaling(base_lr, batch_size, base_batch_size=256):
    """Goyal et al.'s linear scaling rule: a batch k times base_batch_size gets k times the rate
    (e.g. 0.1 per 256 images for ResNet-50)."""
    _check_positive(batch_size, "batch_size")
    _check_positive(base_batch_size, "base_batch_size")
    return base_lr * batch_size / base_batch_size


def goyal_warmup(step, warmup_steps, target_lr, start_lr=None, xp=PYTHON_MATH):
    """Gradual warm-up (Goyal et al.): the rate rises linearly from start_lr at step 0 to
    target_lr at warmup_steps, then stays there. start_lr defaults to target_lr / 4 ... no: to
    the unscaled rate is the paper's choice, which only the caller knows, so None means 0."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, not {warmup_steps!r}")
    start = 0.0 if start_lr is None else start_lr
    if warmup_steps == 0:
        return target_lr + 0.0 * step
    return xp.where(step < warmup_steps,
                    start + (target_lr - start) * xp.maximum(step, 0.0) / warmup_steps,
                    target_lr + 0.0 * step)


def polynomial_decay(step, decay_steps, initial_lr, end_lr=0.0, power=2.0, xp=PYTHON_MATH):
    """(initial - end) * (1 - step/decay_steps)^power + end, held at end_lr after decay_steps
    (You et al. use power 2 with LARS)."""
    _check_positive(decay_steps, "decay_steps")
    t = xp.minimum(xp.maximum(step, 0.0), float(decay_steps)) / decay_steps
    return (initial_lr - end_lr) * (1.0 - t) ** power + end_lr


def cosine_decay(step, decay_steps, initial_lr, end_lr=0.0, xp=PYTHON_MATH):
    """end + (initial - end) * (1 + cos(pi * step/decay_steps)) / 2, held at end_lr after."""
    _check_positive(decay_steps, "decay_steps")
    t = xp.minimum(xp.maximum(step, 0.0), float(decay_steps)) / decay_steps
    return end_lr + (initial_lr - end_lr) * 0.5 * (1.0 + xp.cos(math.pi * t))


def warmup_then_decay(step, warmup_steps, total_steps, peak_lr, start_lr=0.0, end_lr=0.0,
                      decay="cosine", power=2.0, xp=PYTHON_MATH):
    """Linear warm-up to peak_lr over warmup_steps, then cosine or polynomial decay to end_lr
    at total_steps: the shape of the LARS/LAMB recipes."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    if decay == "cosine":
        decayed = cosine_decay(step - warmup_steps, total_steps - warmup_steps, peak_lr, end_lr,
                               xp)
    elif decay == "polynomial":
        decayed = polynomial_decay(step - warmup_steps, total_steps - warmup_steps, peak_lr,
                                   end_lr, power, xp)
    else:
        raise ValueError(f"decay must be 'cosine' or 'polynomial', not {decay!r}")
    if warmup_steps == 0:
        return decayed
    return xp.where(step < warmup_steps, goyal_warmup(step, warmup_steps, peak_lr, start_lr, xp),
                    decayed)


# Akiba et al.'s slow start for 90 epochs: (epochs, fraction of the scaled base rate).
SLOW_START_STAGES = ((40, 0.5), (30, 0.075), (15, 0.01), (5, 0.001))


def slow_start(epoch, base_lr, stages=SLOW_START_STAGES, total_epochs=None, xp=PYTHON_MATH):
    """Akiba et al.'s slow-start rate: piecewise constant, base_lr times each stage's fraction
    (base_lr is eta_base = 0.1 * batch / 256 in the paper). total_epochs rescales the stages'
    lengths proportionally (the paper's add up to 90); after the last stage its value holds."""
    lengths = [float(n) for n, _ in stages]
    if total_epochs is not None:
        _check_positive(total_epochs, "total_epochs")
        scale = total_epochs / sum(lengths)
        lengths = [n * scale for n in lengths]
    ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
    value = base_lr * stages[-1][1] + 0.0 * epoch
    for end, (_, fraction) in reversed(list(zip(ends, stages))):
        value = xp.where(epoch < end, base_lr * fraction + 0.0 * epoch, value)
    return value


def akiba_sgd_weight(epoch, center=10.0, period=5.0, xp=PYTHON_MATH):
    """alpha_SGD of Akiba et al.'s RMSprop warm-up: 1/2 e^(2(epoch-center)/period) before
    `center`, then 1/2 + 2(epoch-center)/period up to 1. The update is
    delta <- mu1 delta - (alpha_SGD + (1 - alpha_SGD) / (sqrt(m) + eps)) g: pure RMSprop at the
    start, pure momentum SGD once the weight reaches 1."""
    _check_positive(period, "period")
    return xp.where(epoch < center,
                    0.5 * xp.exp(2.0 * xp.minimum(epoch - center, 0.0) / period),
                    xp.minimum(1.0, 0.5 + 2.0 * (epoch - center) / period))
