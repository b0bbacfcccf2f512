"""Argument rules every face applies the same way, once per request."""
import operator

from fusecomm._engine import DTYPE_CODES, OP_NAMES, Adasum, Average, Max, Min, Product, Sum

SUPPORTED_DTYPES = ", ".join(DTYPE_CODES)
_OP_LABELS = {Sum: "Sum", Average: "Average", Min: "Min", Max: "Max", Product: "Product",
              Adasum: "Adasum"}
_INT_LIMIT = 1 << 62


class UnsupportedDtypeError(TypeError, ValueError):
    """A tensor of a dtype the engine has no code for. Both a TypeError (fusecomm's own
    convention) and a ValueError (what Horovod raises: 'Tensor type ... is not supported'), so
    that either `except` keeps working."""


class SplitsError(TypeError, ValueError):
    """alltoall splits that are not a 1-D sequence of integers. Horovod raises a ValueError
    (torch, eager TensorFlow) or a TypeError (TensorFlow graph building); this is both."""

    # Exception's own constructor: tf.function's tracing re-raises an error as its own type only
    # for exceptions built from a message alone (otherwise as a StagingError).
    __init__ = Exception.__init__


def dtype_code(dtype_name, shown=None):
    """The engine's code for a dtype name; `shown` is (how the caller's framework spells the
    dtype, the supported ones), for the message."""
    code = DTYPE_CODES.get(dtype_name)
    if code is None:
        what, supported = shown or (dtype_name, SUPPORTED_DTYPES)
        raise UnsupportedDtypeError(f"fusecomm does not support dtype {what}; "
                                    f"supported: {supported}")
    return code


def resolve_op(op, average=None, default=Average):
    """Horovod's rules: `average` is deprecated in favour of `op`; both at once is an error."""
    if op is not None and average is not None:
        raise ValueError("pass either op= or the deprecated average=, not both")
    if average is not None:
        return Average if average else Sum
    if op is None:
        return default
    if op not in _OP_LABELS:
        raise ValueError(f"unknown reduce op {op!r}; use Sum, Average, Min, Max, Product or "
                         "Adasum")
    return int(op)


def check_scale(factor, what):
    """A finite float (prescale/postscale factors)."""
    if factor.__class__ is float and factor - factor == 0.0:  # finite: inf - inf and nan are nan
        return factor
    try:
        value = float(factor)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{what} must be a finite number, not {factor!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, not {value}")
    return value


def check_int(value, what):
    """An integer argument (root rank, split); OverflowError and floats become clear errors."""
    try:
        result = operator.index(value)  # ints and NumPy integers; not floats or strings
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {value!r}") from None
    if not -_INT_LIMIT < result < _INT_LIMIT:
        raise ValueError(f"{what} {result} is out of range")
    return result


def check_rows(ndim, op_type):
    """allgather, reducescatter and alltoall work on the first dimension."""
    if ndim == 0:
        raise ValueError(f"{OP_NAMES[op_type]} needs a tensor with at least one dimension")


def split_list(splits):
    """alltoall splits (a list, NumPy array, torch or TF tensor) as a list of ints, or None."""
    if splits is None:
        return None
    shape = getattr(splits, "shape", None)
    if shape is not None and len(shape) != 1:
        raise SplitsError(f"alltoall expects splits to be a 1-D sequence of integers, not a "
                          f"{len(shape)}-D {type(splits).__name__}")
    try:
        values = splits.tolist() if hasattr(splits, "tolist") else list(splits)
        if any(isinstance(s, bool) for s in values):
            raise TypeError
        values = [operator.index(s) for s in values]
    except TypeError:
        raise SplitsError(f"alltoall expects splits to be a 1-D sequence of integers, not "
                          f"{splits!r}") from None
    if not values:
        raise ValueError("splits is empty; pass one entry per rank, or None for equal splits")
    for s in values:
        if not -_INT_LIMIT < s < _INT_LIMIT:
            raise ValueError(f"split {s} is out of range")
    return values
