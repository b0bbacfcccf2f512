"""The distributed optimizers' rules, shared by torch's DistributedOptimizer
(fusecomm/torch/optimizer.py) and TensorFlow's DistributedGradientTape / Keras
DistributedOptimizer (fusecomm/tensorflow/gradient_tape.py), so that both accept and refuse the
same arguments (Horovod 0.28.1's checks, plus clear errors where Horovod fails later)."""
import operator
import warnings

from fusecomm._engine import Average
from fusecomm._frontend.validate import check_scale


def check_predivide(factor, op):
    """gradient_predivide_factor: with op=Average the sum is scaled by 1/f before and f/size
    after. Horovod refuses it for other ops; a zero factor would divide by zero at the first
    gradient there, here it is refused at once. Returns it as a float."""
    value = check_scale(factor, "gradient_predivide_factor")
    if value != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor is only defined for op=Average (not "
                         "supported with op != Average)")
    if value == 0.0:
        raise ValueError("gradient_predivide_factor must not be zero (the sum is scaled by "
                         "1/gradient_predivide_factor)")
    return value


def reduction_scales(op, predivide):
    """(prescale, postscale) of a gradient reduction: Average splits into 1/f before the sum and
    f after (the engine applies the 1/size)."""
    if op == Average:
        return 1.0 / predivide, predivide
    return 1.0, 1.0


def check_backward_passes(passes):
    """backward_passes_per_step: a positive integer (Horovod's TensorFlow check is '> 0'; a
    fractional count of passes has no meaning, so it is refused too)."""
    try:
        if isinstance(passes, bool):
            raise TypeError
        value = operator.index(passes)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"backward_passes_per_step must be an integer >= 1, not {passes!r}")
    return value


def check_groups(groups, num_groups=0, is_member=None, key=id, kind="tensors"):
    """Horovod's rules for `groups` (and the deprecated `num_groups`): None, a positive integer
    (that many groups), or a list of lists of parameters, each in at most one group. is_member
    tells a parameter of the framework; key identifies one."""
    if num_groups:
        warnings.warn("num_groups is deprecated; use groups", DeprecationWarning, stacklevel=3)
        if groups is None:
            groups = num_groups
    if groups is None:
        return None
    if isinstance(groups, list):
        seen = set()
        for group in groups:
            if not isinstance(group, (list, tuple)):
                raise ValueError(f"groups must be a positive integer or a list of lists of {kind}")
            for p in group:
                if is_member is not None and not is_member(p):
                    raise ValueError(f"groups must consist of {kind}, not "
                                     f"{type(p).__name__}")
                if key(p) in seen:
                    raise ValueError("a parameter can only appear once in groups")
                seen.add(key(p))
        return groups
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"groups must be a positive integer or a list of lists of {kind}")
    return groups


def split_evenly(items, n):
    """n consecutive chunks whose lengths differ by at most one (the first ones longer); the
    groups of groups=n."""
    base, extra = divmod(len(items), n)
    bounds = [i * base + min(i, extra) for i in range(n + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(n)]


def submission_order(count, groups, position):
    """Indices 0..count-1 with the members of each explicit group next to each other (so the
    engine's fusion packs a group together), the others after in their own order. position(p)
    gives a group member's index, or None when it has no gradient this time."""
    if not isinstance(groups, list):
        return list(range(count))
    order, seen = [], set()
    for group in groups:
        for p in group:
            i = position(p)
            if i is not None and i not in seen:
                order.append(i)
                seen.add(i)
    return order + [i for i in range(count) if i not in seen]
