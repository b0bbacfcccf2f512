"""Hypothesis fuzzing of fusecomm's public NumPy API in one process (a job of size 1).

Run by tests/test_fuzz_api.py in a subprocess per target, so a crash (segfault, abort) of the
core shows up as a failed test with the input that caused it instead of killing pytest:

    python tests/fuzz_api_driver.py TARGET [--examples N] [--seed S] [--last-input FILE]

TARGET is one of the names in TARGETS below, or "all". The property, for every call:
  * it returns a correct result (for one rank every collective is the identity, up to the
    pre/post scale factors, which are emulated here bit for bit), or
  * it raises TypeError, ValueError, NotImplementedError or fusecomm.CollectiveError with a
    non-empty message;
and, for inputs that are plainly valid, it must succeed; for inputs that are plainly invalid
(unsupported dtype, non-contiguous array, read-only array to an in-place op, unknown op, bad
root, splits of the wrong length or sum, ...), it must fail.

Before each call the input is described in --last-input, so if the process dies the parent can
say what killed it. Exit status 0: every example held; 1: a property failed (Hypothesis prints
the shrunk falsifying example); a signal: the core crashed.
"""
import argparse
import faulthandler
import math
import os
import operator
import pickle
import threading
import warnings
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument as HypothesisInvalidArgument
from hypothesis.extra import numpy as hnp

import fusecomm as hvd

ALLOWED = (TypeError, ValueError, NotImplementedError, hvd.CollectiveError)

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
    EXOTIC_ML_DTYPES = [np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.int4)]
except ImportError:  # pragma: no cover - ml_dtypes ships with TensorFlow / JAX
    ml_dtypes = None
    BFLOAT16 = None
    EXOTIC_ML_DTYPES = []

SUPPORTED = [np.dtype(n) for n in ("uint8", "int8", "int16", "uint16", "int32", "int64",
                                    "float16", "float32", "float64", "bool")] + ([BFLOAT16] if BFLOAT16 else [])
SUPPORTED_NAMES = {d.name for d in SUPPORTED}
UNSUPPORTED = [np.dtype(n) for n in ("uint32", "uint64", "longdouble",
                                      "complex64", "complex128", "M8[s]", "m8[ms]", "U3", "S2",
                                      "O", "V4")]
UNSUPPORTED += [np.dtype([("a", "<i4"), ("b", "<f8")])] + EXOTIC_ML_DTYPES
# Same names as native dtypes (dtype.name ignores byte order), other byte order.
SWAPPED = [np.dtype(n).newbyteorder() for n in ("int32", "int64", "float16", "float32",
                                               "float64")]

OPS = {hvd.Sum: "Sum", hvd.Average: "Average", hvd.Min: "Min", hvd.Max: "Max",
       hvd.Product: "Product", hvd.Adasum: "Adasum"}
GOOD_ALGORITHMS = {None, "auto", "", "ring", "rhd", "mpi", "native", "hierarchical",
                   "hierarchical_scatter", "torus2d"}
LAST_INPUT = None
STRICT = False
CURRENT = ("", {})  # the call being made: (what, kwargs)

# Deviations from the property that are known and reported, tolerated unless --strict. Empty:
# the issues the fuzzing found are fixed and pinned by regression tests in test_fuzz_api.py.
KNOWN_ISSUES = {}
KNOWN_HITS = {}


# ---- bookkeeping ---------------------------------------------------------------------------------

class PropertyFailure(AssertionError):
    pass


class UserBoom(RuntimeError):
    """Raised by the garbage objects' own methods: propagating it unchanged is correct."""


def known_issue(exc):
    """The KNOWN_ISSUES id that explains `exc` raised by the current call, or None."""
    what, kwargs = CURRENT
    if not KNOWN_ISSUES:
        return None
    if isinstance(exc, OverflowError):
        return "overflow-conversion"
    if what.endswith("_object") and _picklable(kwargs.get("obj")) is None and \
            isinstance(exc, (AttributeError, pickle.PicklingError)):
        return "pickle-errors"
    return None


def tolerate(issue):
    if issue is None or STRICT or issue not in KNOWN_ISSUES:
        return False
    KNOWN_HITS[issue] = KNOWN_HITS.get(issue, 0) + 1
    return True


def describe(value, depth=0):
    """A short, exact description of an argument (arrays: dtype, shape, strides, flags, data)."""
    if isinstance(value, np.ndarray):
        with np.printoptions(threshold=20, edgeitems=3):
            try:
                data = repr(value.tolist()) if value.size <= 16 else f"{value!r}"[:300]
            except Exception:  # noqa: BLE001
                data = "<unprintable>"
        return (f"{type(value).__name__}(dtype={value.dtype.str!r}/{value.dtype.name}, "
                f"shape={value.shape}, strides={value.strides}, "
                f"c_contiguous={value.flags.c_contiguous}, writeable={value.flags.writeable}, "
                f"aligned={value.flags.aligned}, data={data})")
    if isinstance(value, (list, tuple)) and depth < 2:
        inner = ", ".join(describe(v, depth + 1) for v in list(value)[:8])
        return f"{type(value).__name__}[{inner}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, dict) and depth < 2:
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in value.items()) + "}"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__} with a failing repr>"
    return text if len(text) < 300 else text[:300] + "...'"


def record(what, **kwargs):
    """Writes the call about to be made where the parent process can read it after a crash."""
    global CURRENT
    CURRENT = (what, kwargs)
    text = what + "(" + ", ".join(f"{k}={describe(v)}" for k, v in kwargs.items()) + ")"
    try:
        note(text)
    except HypothesisInvalidArgument:  # outside a test (the crash self-test)
        pass
    if LAST_INPUT:
        with open(LAST_INPUT, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text + "\n")


def attempt(fn, *args, **kwargs):
    """Calls fn; returns ("ok", value) or ("error", exception). Anything outside ALLOWED, and
    an allowed error with an empty message, fails the property at once."""
    try:
        return "ok", fn(*args, **kwargs)
    except ALLOWED as e:
        if not str(e).strip():
            raise PropertyFailure(f"{type(e).__name__} with an empty message") from e
        return "error", e
    except UserBoom as e:
        return "error", e
    except Exception as e:  # noqa: BLE001
        if tolerate(known_issue(e)):
            return "error", e
        raise PropertyFailure(f"raised {type(e).__module__}.{type(e).__name__} (not TypeError/"
                              f"ValueError/NotImplementedError/CollectiveError): {e}") from e


def expect(outcome, verdict, what):
    """verdict: "ok" (must succeed), "error" (must fail) or None (either)."""
    kind, value = outcome
    if verdict == "ok" and kind == "error":
        raise PropertyFailure(f"{what}: valid input rejected: {type(value).__name__}: {value}")
    if verdict == "error" and kind == "ok":
        raise PropertyFailure(f"{what}: invalid input accepted; returned {describe(value)}")


# ---- the reference: what one rank must return ----------------------------------------------------

def _to_int_like_core(values, dtype):
    """The core's DoubleToInt: NaN -> 0, saturate to int64, truncate, then wrap to the type."""
    v = np.asarray(values, np.float64)
    out = np.zeros(v.shape, np.int64)
    finite = ~np.isnan(v)
    hi = finite & (v >= 2.0 ** 63)
    lo = finite & (v < -(2.0 ** 63))
    mid = finite & ~hi & ~lo
    out[hi] = np.iinfo(np.int64).max
    out[lo] = np.iinfo(np.int64).min
    out[mid] = np.trunc(v[mid]).astype(np.int64)
    return out.astype(dtype)


def scaled(x, factor):
    """x * factor the way the core computes it (float64 in double, others in float32)."""
    if factor == 1.0:
        return x.copy()
    native = x.dtype.newbyteorder("=")
    x = x.astype(native)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if native.kind in "iu":
            return _to_int_like_core(x.astype(np.float64) * factor, native)
        if native == np.float64:
            return x * np.float64(factor)
        f32 = np.float32(factor)
        return (x.astype(np.float32) * f32).astype(native)


def reference_reduce(x, op, prescale, postscale):
    """What allreduce / reducescatter return on one rank."""
    y = scaled(x, prescale)
    # Average: integers divide by 1 (identity); floats fold 1/size into the postscale.
    return scaled(y, postscale)


def same_values(result, expected):
    if not isinstance(result, np.ndarray):
        return False, f"result is a {type(result).__name__}, not an ndarray"
    if result.shape != expected.shape:
        return False, f"shape {result.shape} != expected {expected.shape}"
    if result.dtype.newbyteorder("=") != expected.dtype.newbyteorder("="):
        return False, f"dtype {result.dtype} != expected {expected.dtype}"
    r = result.astype(result.dtype.newbyteorder("="))
    e = expected.astype(expected.dtype.newbyteorder("="))
    if e.dtype.kind == "f" or e.dtype == BFLOAT16:
        rf, ef = r.astype(np.float64), e.astype(np.float64)
        ok = np.array_equal(rf, ef, equal_nan=True)
    else:
        ok = np.array_equal(r, e)
    if ok:
        return True, ""
    bad = np.argwhere(~((r == e) | (np.isnan(r.astype(np.float64)) & np.isnan(e.astype(np.float64)))
                        if e.dtype.kind in "fV" or e.dtype == BFLOAT16 else (r != e)))
    return False, (f"values differ at {len(bad)} positions, first {bad[:3].tolist()}: "
                   f"got {r.ravel()[:6].tolist()} expected {e.ravel()[:6].tolist()}")


def check_result(result, expected, what, source=None):
    """source: the caller's input, when the result derives from it (for the known issues)."""
    ok, why = same_values(result, expected)
    if not ok and isinstance(source, np.ndarray) and not source.dtype.isnative and \
            tolerate("non-native-byte-order"):
        return
    if not ok:
        raise PropertyFailure(f"{what}: wrong result: {why}")


# ---- strategies ----------------------------------------------------------------------------------

def _values_for(dtype):
    if dtype == np.bool_:
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.one_of(st.integers(-3, 3).filter(lambda v: info.min <= v <= info.max),
                         st.integers(int(info.min), int(info.max)))
    width = 16 if dtype == np.float16 else 32 if dtype == np.float32 else 64
    return st.floats(width=width, allow_nan=True, allow_infinity=True)


@st.composite
def supported_arrays(draw, min_dims=0):
    dtype = draw(st.sampled_from(SUPPORTED))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=0, max_side=5))
    if BFLOAT16 is not None and dtype == BFLOAT16:
        base = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
        return base.astype(BFLOAT16)
    return draw(hnp.arrays(dtype, shape, elements=_values_for(dtype)))


def _swapped(draw):
    dtype = draw(st.sampled_from(SWAPPED))
    native = dtype.newbyteorder("=")
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5))
    # Every element drawn (no fill): values whose bytes are not palindromes show a swap.
    return draw(hnp.arrays(native, shape, elements=_values_for(native),
                           fill=st.nothing())).astype(dtype)


def _unsupported(draw):
    dtype = draw(st.sampled_from(UNSUPPORTED))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return np.zeros(shape, dtype)


LAYOUTS = ["plain", "plain", "plain", "fortran", "strided", "transposed", "readonly",
           "broadcast", "unaligned", "huge_empty", "matrix", "masked"]


def _layout(draw, x):
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "fortran" and x.ndim >= 2:
        return np.asfortranarray(x)
    if layout == "strided" and x.ndim >= 1:
        return x[::2]
    if layout == "transposed":
        return x.T
    if layout == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if layout == "broadcast":
        return np.broadcast_to(x, (draw(st.integers(0, 3)),) + x.shape)
    if layout == "unaligned" and x.dtype.itemsize > 1 and x.dtype.kind != "O":
        raw = np.zeros(x.nbytes + 1, np.uint8)
        y = raw[1:].view(x.dtype).reshape(x.shape)
        y[...] = x
        return y
    if layout == "huge_empty":
        return np.empty((0, draw(st.sampled_from([1, 2 ** 20, 2 ** 31, 2 ** 40]))), np.uint8)
    if layout == "matrix" and x.ndim == 2 and x.dtype.kind != "V":
        return np.asmatrix(x)
    if layout == "masked":
        return np.ma.masked_array(x)
    return x


@st.composite
def any_array(draw, min_dims=0):
    kind = draw(st.sampled_from(["supported"] * 6 + ["swapped"] * 2 + ["unsupported"]))
    if kind == "supported":
        x = draw(supported_arrays(min_dims=min_dims))
    elif kind == "swapped":
        x = _swapped(draw)
    else:
        x = _unsupported(draw)
    return _layout(draw, x)


class Weird:
    """An object NumPy turns into a 0-d object array."""

    def __repr__(self):
        return "Weird()"


class BadArrayInterface:
    """Claims to be an array and then misbehaves."""

    @property
    def __array_interface__(self):
        raise UserBoom("boom from __array_interface__")


class BadLen:
    def __len__(self):
        raise UserBoom("boom from __len__")

    def __getitem__(self, i):
        raise UserBoom("boom from __getitem__")


def garbage():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
        st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(),
        st.text(max_size=5), st.binary(max_size=5),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.just([[1, 2], [3]]), st.just([[1.0], "a"]), st.just([None, 1]),
        st.lists(st.integers(-100, 100), max_size=4), st.lists(st.floats(), max_size=4),
        st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), max_size=3),
        st.builds(object), st.builds(Weird), st.builds(BadArrayInterface), st.builds(BadLen),
        st.just(set()), st.just(range(4)), st.builds(lambda: (i for i in range(3))),
        st.builds(lambda: memoryview(b"abcd")), st.builds(lambda: bytearray(b"abc")),
        st.builds(lambda: np.float32(2.5)), st.builds(lambda: np.int64(7)),
        st.builds(lambda: np.array([Weird(), 1], dtype=object)),
    )


@st.composite
def tensors(draw, min_dims=0):
    # A composite, not one_of(arrays, garbage()): one_of flattens nested one_ofs, and the many
    # garbage branches would drown the arrays.
    if draw(st.integers(0, 3)) == 0:
        return draw(garbage())
    return draw(any_array(min_dims=min_dims))


def op_values():
    return st.one_of(st.none(), st.sampled_from([hvd.Sum, hvd.Average, hvd.Min, hvd.Max,
                                                 hvd.Product, hvd.Adasum]),
                     st.integers(-3, 8), st.just(2 ** 40), st.just(1.0), st.just(1.5),
                     st.just("Sum"), st.just(np.int64(0)), st.just([0]), st.just(float("nan")),
                     st.builds(object))


def average_values():
    return st.one_of(st.none(), st.none(), st.booleans(), st.just("yes"),
                     st.just(np.array([1, 0])))


@st.composite
def scale_values(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from([1.0, 1]))
    if kind == 1:
        return draw(st.one_of(st.sampled_from([2.0, 0.5, -3.0, 0.1, 3]),
                              st.floats(min_value=-4, max_value=4), st.integers(-5, 5)))
    return draw(st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.just(10 ** 400),
        st.just(-(10 ** 400)), st.just(2 ** 64), st.just("1.5"), st.just("abc"), st.just(""),
        st.none(), st.just(1 + 2j), st.just(np.float16(0.5)), st.just(Fraction(1, 3)),
        st.just(np.array([1.0, 2.0])), st.just(np.array(2.0)), st.just([2.0]), st.builds(object),
        st.just(True)))


def names():
    return st.one_of(st.none(), st.none(), st.sampled_from(["a", "b", "grad/w", "ü ñ", "x" * 5000,
                                                             "nul\x00name", "dup"]),
                     st.text(max_size=8), st.just(""), st.just("\ud800 lone surrogate"),
                     st.integers(), st.binary(max_size=3), st.just(["a"]), st.builds(object))


def algorithms():
    return st.one_of(st.none(), st.sampled_from(sorted(a for a in GOOD_ALGORITHMS if a)),
                     st.sampled_from(["nccl", "RING", "bogus", "", "ring "]), st.integers(0, 3),
                     st.just(b"ring"))


def roots():
    return st.one_of(st.just(0), st.just(0), st.integers(-3, 3), st.integers(-2 ** 70, 2 ** 70),
                     st.just(2 ** 31), st.just(2 ** 63), st.just(-(2 ** 31) - 1),
                     st.floats(allow_nan=True, allow_infinity=True), st.just("0"), st.just("x"),
                     st.none(), st.just(np.int64(0)), st.booleans(), st.just(0.0),
                     st.just([0]), st.builds(object))


def process_sets():
    return st.one_of(st.just("default"), st.just("default"), st.just(hvd.global_process_set),
                     st.none(), st.just(hvd.ProcessSet([0])), st.just(hvd.ProcessSet([5])),
                     st.just(0), st.just("set"), st.just([0]))


# ---- classification of inputs --------------------------------------------------------------------

def plain_name(name):
    if name is None:
        return True
    if not isinstance(name, str) or not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None  # either way
    return True


def name_verdict(name):
    v = plain_name(name)
    return "ok" if v else ("error" if v is False else None)


def scale_number(factor):
    """float(factor) if fusecomm must accept it, None if it must reject it, ... otherwise."""
    if isinstance(factor, bool):
        return float(factor)
    if isinstance(factor, float):
        return factor
    if isinstance(factor, int):
        return float(factor) if abs(factor) < 2 ** 1000 else ...
    if isinstance(factor, (np.floating, np.integer, Fraction)):
        return float(factor)
    if factor is None or isinstance(factor, (complex, list, dict, bytes)) or \
            type(factor) is object:
        return None
    return ...


def array_verdict(x, writable=False, min_dims=0):
    """("ok"/"error"/None, reference array or None) for a tensor argument."""
    if isinstance(x, np.ndarray):
        if x.dtype.name not in SUPPORTED_NAMES:
            return "error", None
        if not x.flags.c_contiguous:
            return "error", None
        if writable and not x.flags.writeable:
            return "error", None
        if x.ndim < min_dims:
            return "error", None
        if isinstance(x, np.ma.MaskedArray):
            return None, np.asarray(x)
        return ("ok" if x.dtype.isnative else None), np.asarray(x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.asarray(x)
    except Exception:  # noqa: BLE001
        return "error", None
    if ref.dtype.name not in SUPPORTED_NAMES:
        return "error", None
    if ref.ndim < min_dims:
        return "error", None
    return None, ref


def combine(*verdicts):
    if "error" in verdicts:
        return "error"
    if all(v == "ok" for v in verdicts):
        return "ok"
    return None


def op_verdict(op, average, dtype, allreduce=True):
    """(verdict, resolved op or None). Adasum: allreduce only, floating-point dtypes."""
    if op is not None and average is not None:
        return "error", None
    if average is not None:
        if isinstance(average, np.ndarray):
            return "error", None
        resolved = hvd.Average if average else hvd.Sum
    elif op is None:
        resolved = hvd.Average
    elif isinstance(op, (list, dict)) or type(op) is object:
        return "error", None
    elif isinstance(op, float) and math.isnan(op):
        return "error", None
    elif op in OPS:
        resolved = int(op)
    else:
        return "error", None
    if dtype is not None and dtype == np.bool_ and resolved == hvd.Average:
        return "error", None
    if resolved == hvd.Adasum and (not allreduce or (
            dtype is not None and dtype.kind != "f" and dtype != BFLOAT16)):
        return "error", None
    return "ok", resolved


def algorithm_verdict(algorithm):
    if algorithm is None:
        return "ok"
    if not isinstance(algorithm, str):
        return "error"
    if algorithm in GOOD_ALGORITHMS:
        return "ok"
    if algorithm == "nccl":
        return None
    return "error"


def ps_kwargs(ps):
    return {} if isinstance(ps, str) and ps == "default" else {"process_set": ps}


def ps_verdict(ps):
    if isinstance(ps, str) and ps == "default":
        return "ok"
    if ps is None or ps is hvd.global_process_set:
        return "ok"
    return "error"  # not a ProcessSet, or one never added


def root_verdict(root):
    if isinstance(root, (list, dict)) or root is None or type(root) is object:
        return "error"
    try:
        value = operator.index(root)  # an integer type: strings and floats are refused
    except TypeError:
        return "error"
    return "ok" if value == 0 else "error"


# ---- targets -------------------------------------------------------------------------------------

def _scales_verdict(pre, post, dtype):
    a, b = scale_number(pre), scale_number(post)
    if a is None or b is None:
        return "error", None, None
    if a is ... or b is ...:
        return None, None, None
    if dtype is not None and dtype == np.bool_ and (a != 1.0 or b != 1.0):
        return "error", a, b
    return "ok", a, b


@given(tensor=tensors(), average=average_values(), op=op_values(), pre=scale_values(),
       post=scale_values(), name=names(), algorithm=algorithms(), ps=process_sets(),
       in_place=st.booleans(), use_async=st.booleans())
def fuzz_allreduce(tensor, average, op, pre, post, name, algorithm, ps, in_place, use_async):
    fn = {(False, False): hvd.allreduce, (True, False): hvd.allreduce_,
          (False, True): hvd.allreduce_async, (True, True): hvd.allreduce_async_}[
        (in_place, use_async)]
    kwargs = dict(average=average, name=name, op=op, prescale_factor=pre, postscale_factor=post,
                  algorithm=algorithm, **ps_kwargs(ps))
    record(fn.__name__, tensor=tensor, **kwargs)
    t_verdict, ref = array_verdict(tensor, writable=in_place)
    dtype = ref.dtype if ref is not None else None
    o_verdict, resolved = op_verdict(op, average, dtype)
    s_verdict, a, b = _scales_verdict(pre, post, dtype)
    verdict = combine(t_verdict, o_verdict, s_verdict, name_verdict(name),
                      algorithm_verdict(algorithm), ps_verdict(ps))
    if ref is not None:
        ref = ref.copy()
    outcome = attempt(fn, tensor, **kwargs)
    if use_async and outcome[0] == "ok":
        handle = outcome[1]
        polled = attempt(hvd.poll, handle)
        if polled[0] != "ok" or not isinstance(polled[1], bool):
            raise PropertyFailure(f"poll of a fresh handle gave {polled}")
        outcome = attempt(hvd.synchronize, handle)
        again = attempt(hvd.synchronize, handle)
        if again[0] != "error" or not isinstance(again[1], ValueError):
            raise PropertyFailure(f"second synchronize of a handle gave {again}")
    expect(outcome, verdict, fn.__name__)
    if outcome[0] == "ok" and ref is not None and a not in (None, ...) and b not in (None, ...):
        expected = reference_reduce(ref, resolved, a, b)
        check_result(outcome[1], expected, fn.__name__, ref)
        if in_place and isinstance(tensor, np.ndarray):
            check_result(tensor, expected, fn.__name__ + " (the input, in place)", ref)


@given(tensor_list=st.one_of(st.lists(tensors(), max_size=4),
                             st.lists(supported_arrays(), min_size=1, max_size=6), garbage()),
       op=op_values(), name=names(), pre=scale_values())
def fuzz_grouped_allreduce(tensor_list, op, name, pre):
    kwargs = dict(op=op, name=name, prescale_factor=pre)
    record("grouped_allreduce", tensors=tensor_list, **kwargs)
    outcome = attempt(hvd.grouped_allreduce, tensor_list, **kwargs)
    if not isinstance(tensor_list, list):
        return
    verdicts, refs = [], []
    for t in tensor_list:
        v, ref = array_verdict(t)
        ov, resolved = op_verdict(op, None, ref.dtype if ref is not None else None)
        sv, a, _ = _scales_verdict(pre, 1.0, ref.dtype if ref is not None else None)
        verdicts.append(combine(v, ov, sv, name_verdict(name)))
        refs.append((ref, resolved, a))
    if not tensor_list:  # nothing to reduce, but the arguments are still checked
        verdicts.append(combine(name_verdict(name), op_verdict(op, None, None)[0],
                                _scales_verdict(pre, 1.0, None)[0]))
    expect(outcome, combine(*verdicts), "grouped_allreduce")
    if outcome[0] == "ok":
        if len(outcome[1]) != len(tensor_list):
            raise PropertyFailure(f"{len(outcome[1])} results for {len(tensor_list)} tensors")
        for result, (ref, resolved, a) in zip(outcome[1], refs):
            if ref is not None and a not in (None, ...):
                check_result(result, reference_reduce(ref, resolved, a, 1.0), "grouped_allreduce",
                             ref)


@given(tensor=tensors(), name=names(), ps=process_sets(), use_async=st.booleans())
def fuzz_allgather(tensor, name, ps, use_async):
    fn = hvd.allgather_async if use_async else hvd.allgather
    record(fn.__name__, tensor=tensor, name=name, ps=ps)
    t_verdict, ref = array_verdict(tensor, min_dims=1)
    verdict = combine(t_verdict, name_verdict(name), ps_verdict(ps))
    outcome = attempt(fn, tensor, name=name, **ps_kwargs(ps))
    if use_async and outcome[0] == "ok":
        outcome = attempt(hvd.synchronize, outcome[1])
    expect(outcome, verdict, "allgather")
    if outcome[0] == "ok" and ref is not None:
        check_result(outcome[1], ref, "allgather", ref)


@given(tensor=tensors(), root=roots(), name=names(), ps=process_sets(), in_place=st.booleans(),
       use_async=st.booleans())
def fuzz_broadcast(tensor, root, name, ps, in_place, use_async):
    fn = {(False, False): hvd.broadcast, (True, False): hvd.broadcast_,
          (False, True): hvd.broadcast_async, (True, True): hvd.broadcast_async_}[
        (in_place, use_async)]
    record(fn.__name__, tensor=tensor, root_rank=root, name=name, ps=ps)
    t_verdict, ref = array_verdict(tensor, writable=in_place)
    verdict = combine(t_verdict, root_verdict(root), name_verdict(name), ps_verdict(ps))
    if ref is not None:
        ref = ref.copy()
    outcome = attempt(fn, tensor, root, name=name, **ps_kwargs(ps))
    if use_async and outcome[0] == "ok":
        outcome = attempt(hvd.synchronize, outcome[1])
    expect(outcome, verdict, fn.__name__)
    if outcome[0] == "ok" and ref is not None:
        check_result(outcome[1], ref, fn.__name__, ref)
        if in_place and isinstance(tensor, np.ndarray):
            check_result(tensor, ref, fn.__name__ + " (the input, in place)", ref)


@given(tensor=tensors(), op=op_values(), pre=scale_values(), post=scale_values(), name=names(),
       ps=process_sets(), use_async=st.booleans())
def fuzz_reducescatter(tensor, op, pre, post, name, ps, use_async):
    fn = hvd.reducescatter_async if use_async else hvd.reducescatter
    op_arg = hvd.Average if op is None else op
    kwargs = dict(name=name, op=op_arg, prescale_factor=pre, postscale_factor=post,
                  **ps_kwargs(ps))
    record(fn.__name__, tensor=tensor, **kwargs)
    t_verdict, ref = array_verdict(tensor, min_dims=1)
    dtype = ref.dtype if ref is not None else None
    o_verdict, resolved = op_verdict(op_arg, None, dtype, allreduce=False)
    s_verdict, a, b = _scales_verdict(pre, post, dtype)
    verdict = combine(t_verdict, o_verdict, s_verdict, name_verdict(name), ps_verdict(ps))
    if ref is not None:
        ref = ref.copy()
    outcome = attempt(fn, tensor, **kwargs)
    if use_async and outcome[0] == "ok":
        outcome = attempt(hvd.synchronize, outcome[1])
    expect(outcome, verdict, fn.__name__)
    if outcome[0] == "ok" and ref is not None and a not in (None, ...) and b not in (None, ...):
        check_result(outcome[1], reference_reduce(ref, resolved, a, b), fn.__name__, ref)


def splits_values():
    return st.one_of(
        st.none(), st.none(), st.lists(st.integers(-3, 8), max_size=3),
        st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=1, max_size=3),
        st.just([2 ** 64]), st.just([1.5]), st.just([True]), st.just("1"), st.just([[1]]),
        st.just(np.array([], dtype=np.int64)), st.just(np.array([2], dtype=np.uint64)),
        st.just(np.array([-1], dtype=np.int8)), st.just(5), st.just([None]), st.just({}),
        st.just(np.array([2 ** 63 - 1], dtype=np.int64)))


@given(tensor=tensors(), splits=splits_values(), name=names(), ps=process_sets(),
       use_async=st.booleans(), matching_splits=st.booleans())
def fuzz_alltoall(tensor, splits, name, ps, use_async, matching_splits):
    t_verdict, ref = array_verdict(tensor, min_dims=1)
    if matching_splits and ref is not None and ref.ndim >= 1:
        splits = [ref.shape[0]]
    fn = hvd.alltoall_async if use_async else hvd.alltoall
    record(fn.__name__, tensor=tensor, splits=splits, name=name, ps=ps)
    if splits is None:
        s_verdict = "ok"
    else:
        try:
            arr = np.asarray(splits)
            good_type = arr.ndim == 1 and arr.dtype.kind in "iu"
        except Exception:  # noqa: BLE001
            good_type = False
        if not good_type:
            s_verdict = "error"
        elif ref is None or ref.ndim < 1:
            s_verdict = None
        else:
            s_verdict = "ok" if (arr.size == 1 and int(arr[0]) == ref.shape[0]) else "error"
    verdict = combine(t_verdict, s_verdict, name_verdict(name), ps_verdict(ps))
    outcome = attempt(fn, tensor, splits=splits, name=name, **ps_kwargs(ps))
    if use_async and outcome[0] == "ok":
        outcome = attempt(hvd.synchronize, outcome[1])
    if verdict == "error" and outcome[0] == "ok" and isinstance(splits, np.ndarray) and \
            splits.size == 0 and splits.dtype.kind in "iu" and \
            combine(t_verdict, name_verdict(name), ps_verdict(ps)) != "error" and \
            tolerate("alltoall-empty-splits"):
        verdict = None
    expect(outcome, verdict, "alltoall")
    if outcome[0] == "ok" and ref is not None:
        if not (isinstance(outcome[1], tuple) and len(outcome[1]) == 2):
            raise PropertyFailure(f"alltoall returned {describe(outcome[1])}, not (array, splits)")
        out, received = outcome[1]
        check_result(out, ref, "alltoall", ref)
        if np.asarray(received).tolist() != [ref.shape[0]]:
            raise PropertyFailure(f"alltoall received splits {received!r}, expected "
                                  f"[{ref.shape[0]}]")


def handles():
    return st.one_of(st.integers(-2 ** 70, 2 ** 70), st.integers(-2, 100), st.none(),
                     st.text(max_size=3), st.floats(), st.just([1]), st.just({}),
                     st.builds(object), st.just(np.int64(1)))


@given(handle=handles(), action=st.sampled_from(["poll", "synchronize"]),
       ps=process_sets())
def fuzz_handles_and_barrier(handle, action, ps):
    fn = hvd.poll if action == "poll" else hvd.synchronize
    record(action, handle=handle)
    outcome = attempt(fn, handle)
    # No handle is outstanding here, so every value is bogus.
    expect(outcome, "error", action)
    record("barrier", ps=ps)
    outcome = attempt(hvd.barrier, **ps_kwargs(ps))
    expect(outcome, ps_verdict(ps), "barrier")
    if outcome[0] == "ok" and outcome[1] is not None:
        raise PropertyFailure(f"barrier returned {outcome[1]!r}")


def objects():
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                       st.binary(max_size=20), st.complex_numbers())
    picklable = st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=12)
    return st.one_of(picklable, picklable, st.builds(lambda: np.arange(5)),
                     st.just(b"\x00" * 100000), st.builds(Weird),
                     st.builds(lambda: (lambda: 0)), st.builds(threading.Lock),
                     st.builds(lambda: (i for i in range(2))))


def _picklable(obj):
    try:
        return pickle.dumps(obj)
    except Exception:  # noqa: BLE001
        return None


@given(obj=objects(), root=roots(), name=names(), ps=process_sets(),
       which=st.sampled_from(["broadcast_object", "allgather_object"]))
def fuzz_objects(obj, root, name, ps, which):
    payload = _picklable(obj)
    if which == "broadcast_object":
        record(which, obj=obj, root_rank=root, name=name, ps=ps)
        outcome = attempt(hvd.broadcast_object, obj, root, name=name, **ps_kwargs(ps))
        verdict = combine("ok" if payload is not None else "error", root_verdict(root),
                          ps_verdict(ps), name_verdict(name) if name else "ok")
    else:
        record(which, obj=obj, name=name, ps=ps)
        outcome = attempt(hvd.allgather_object, obj, name=name, **ps_kwargs(ps))
        verdict = combine("ok" if payload is not None else "error", ps_verdict(ps),
                          name_verdict(name) if name else "ok")
    # Names of other types (5, b"x") are formatted into the internal names: either way is fine.
    if name is not None and not isinstance(name, str):
        verdict = None if verdict != "error" or payload is not None else verdict
    expect(outcome, verdict, which)
    if outcome[0] == "ok":
        got = outcome[1] if which == "broadcast_object" else outcome[1]
        if which == "allgather_object":
            if not isinstance(got, list) or len(got) != 1:
                raise PropertyFailure(f"allgather_object returned {describe(got)}")
            got = got[0]
        if isinstance(obj, np.ndarray):
            ok = isinstance(got, np.ndarray) and np.array_equal(got, obj)
        else:
            ok = _picklable(got) == payload
        if not ok:
            raise PropertyFailure(f"{which} returned {describe(got)} for {describe(obj)}")


# init and process sets: each example shuts the engine down and starts it again.
SETTING_VALUES = st.one_of(st.none(), st.integers(-3, 10), st.just(2 ** 40), st.just(2 ** 64),
                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                           st.just("1e300"), st.just("nan"), st.just("inf"), st.just("-0"),
                           st.just(" 5"), st.just("ring"), st.just("debug"), st.just("bogus"),
                           st.just(""), st.just(1.5), st.just([1]))
SETTINGS = ["cycle_time_ms", "fusion_threshold", "cache_capacity", "allreduce_algorithm",
            "local_size", "torus_x", "stall_warning_seconds", "stall_shutdown_seconds",
            "log_level"]
ENV_NAMES = ["FUSECOMM_" + s.upper() for s in SETTINGS]


def _bad_cycle_time(value):
    """A cycle time the engine accepts although it is not a usable finite duration."""
    if value is None:
        return False
    try:
        number = float(str(value).strip())
    except ValueError:
        return False
    return not math.isfinite(number) or number > 1e12


def _restore_engine():
    for var in ENV_NAMES:
        os.environ.pop(var, None)
    if not hvd.is_initialized():
        hvd.init()


@given(settings_kw=st.dictionaries(st.one_of(st.sampled_from(SETTINGS), st.just("bogus_key")),
                                   SETTING_VALUES, max_size=3),
       comm=st.one_of(st.none(), st.none(), st.just([0]), st.just([]), st.just([1]),
                      st.just([0, 0]).filter(lambda _: STRICT), st.just([-1]), st.just("0"), st.just("abc"),
                      st.just(5), st.just([0.5]), st.just([[0]]), st.just([2 ** 40])),
       double_init=st.booleans(),
       sets=st.lists(st.one_of(st.just([0]), st.just([0, 0]), st.just([1]), st.just([]),
                               st.just([-1]), st.just("0"), st.just(None), st.just([0.5]),
                               st.just([2 ** 63]), st.just(0)), max_size=2))
def fuzz_init_and_process_sets(settings_kw, comm, double_init, sets):
    if not STRICT and _bad_cycle_time(settings_kw.get("cycle_time_ms")):
        tolerate("cycle-time-not-finite")
        assume(False)  # not run: it busy-spins (and is undefined behaviour under UBSan)
    try:
        hvd.shutdown()
        record("init", comm=comm, **settings_kw)
        outcome = attempt(hvd.init, comm=comm, **settings_kw)
        if outcome[0] == "ok":
            if double_init:
                expect(attempt(hvd.init), "ok", "second init()")
            if hvd.size() != 1 or hvd.rank() != 0:
                raise PropertyFailure(f"size {hvd.size()} rank {hvd.rank()} in a 1-process job")
            x = np.arange(6, dtype=np.float32)
            record("allreduce after init", comm=comm, **settings_kw)
            out = attempt(hvd.allreduce, x, op=hvd.Sum, name="after_init")
            # A setting the engine accepted must leave it working.
            expect(out, "ok", f"allreduce after init({settings_kw}, comm={comm!r})")
            check_result(out[1], x, "allreduce after init")
            for ranks in sets:
                record("add_process_set", ranks=ranks)
                added = attempt(hvd.add_process_set, ranks)
                # In a one-rank job every valid set is the global set, which exists already.
                expect(added, "error", f"add_process_set({ranks!r}) in a one-rank job")
                if added[0] == "ok":
                    ps = added[1]
                    r = attempt(hvd.allreduce, x, op=hvd.Sum, name="in_set", process_set=ps)
                    expect(r, "ok", f"allreduce in process set {ranks!r}")
                    check_result(r[1], x, "allreduce in a process set")
                    expect(attempt(hvd.remove_process_set, ps), "ok", "remove_process_set")
                    if ps.process_set_id is not None:
                        raise PropertyFailure("removed set keeps its id")
                    again = attempt(hvd.allreduce, x, name="in_removed", process_set=ps)
                    expect(again, "error", "allreduce in a removed set")
            hvd.shutdown()
            for fn in (lambda: hvd.allreduce(x), hvd.barrier, lambda: hvd.broadcast(x, 0)):
                after = attempt(fn)
                if after[0] != "error" or not isinstance(after[1], ValueError):
                    raise PropertyFailure(f"a collective after shutdown gave {after}")
    finally:
        _restore_engine()


@given(sizes=st.lists(st.integers(0, 5), min_size=1, max_size=5),
       dup=st.booleans(), shutdown_midway=st.booleans(), dtype=st.sampled_from(SUPPORTED))
def fuzz_async_lifecycle(sizes, dup, shutdown_midway, dtype):
    """Several handles in flight, duplicate names while in flight, shutdown with handles open."""
    try:
        arrays = [np.ones(n, dtype) for n in sizes]
        record("lifecycle", sizes=sizes, dup=dup, shutdown_midway=shutdown_midway, dtype=dtype)
        hs = []
        for i, a in enumerate(arrays):
            name = "dup.name" if dup else f"lc.{i}"
            out = attempt(hvd.allreduce_async, a, name=name, op=hvd.Sum)
            if out[0] == "ok":
                hs.append((out[1], a))
            elif not dup or i == 0:
                raise PropertyFailure(f"allreduce_async failed: {out[1]}")
        if shutdown_midway:
            hvd.shutdown()
            for h, _ in hs:
                # The handles are gone with the engine; they fail cleanly.
                res = attempt(hvd.synchronize, h)
                if res[0] != "error":
                    raise PropertyFailure("a handle survived shutdown")
            return
        for h, a in hs:
            res = attempt(hvd.synchronize, h)
            expect(res, "ok", "synchronize")
            check_result(res[1], a, "allreduce_async")
    finally:
        _restore_engine()


@given(plan=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                                st.integers(0, 64), st.sampled_from(SUPPORTED[:7])),
                      min_size=2, max_size=12),
       threads=st.integers(2, 4))
def fuzz_threads(plan, threads):
    """Several Python threads submit at once (names colliding on purpose) and synchronize;
    every call succeeds with the right answer or fails cleanly (duplicate in-flight name)."""
    record("threads", plan=plan, threads=threads)
    failures = []

    def worker(k):
        try:
            for j, (name, n, dtype) in enumerate(plan):
                x = np.arange(n).astype(dtype)
                out = attempt(hvd.allreduce_async, x, name=f"thr.{name}", op=hvd.Max)
                if out[0] == "error":
                    if "in flight" not in str(out[1]) and "already" not in str(out[1]):
                        failures.append(f"thread {k}: unexpected error {out[1]!r}")
                    continue
                res = attempt(hvd.synchronize, out[1])
                if res[0] != "ok":
                    failures.append(f"thread {k}: synchronize failed: {res[1]!r}")
                    continue
                ok, why = same_values(res[1], x)
                if not ok:
                    failures.append(f"thread {k} op {j}: wrong result: {why}")
        except Exception as e:  # noqa: BLE001 - reported below, in the main thread
            failures.append(f"thread {k}: {type(e).__name__}: {e}")

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
        if t.is_alive():
            raise PropertyFailure("a thread hangs in allreduce/synchronize")
    if failures:
        raise PropertyFailure("; ".join(failures[:5]))


TARGETS = {
    "threads": fuzz_threads,
    "allreduce": fuzz_allreduce,
    "grouped_allreduce": fuzz_grouped_allreduce,
    "allgather": fuzz_allgather,
    "broadcast": fuzz_broadcast,
    "reducescatter": fuzz_reducescatter,
    "alltoall": fuzz_alltoall,
    "handles_and_barrier": fuzz_handles_and_barrier,
    "objects": fuzz_objects,
    "init_and_process_sets": fuzz_init_and_process_sets,
    "async_lifecycle": fuzz_async_lifecycle,
}


def selftest_crash():
    """Not a fuzz target: dies of SIGSEGV after recording an input, so tests/test_fuzz_api.py
    can check that a crash is reported with the input that caused it."""
    import ctypes

    record("selftest_crash", address="reading address 0")
    ctypes.string_at(0)


def run(target, examples, seed):
    if target == "selftest-crash":
        selftest_crash()
        return
    test = TARGETS[target]
    test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    print_blob=True, suppress_health_check=list(HealthCheck))(test)
    test = hypothesis_seed(seed)(test)
    print(f"fuzz {target}: {examples} examples, seed {seed}", flush=True)
    KNOWN_HITS.clear()
    test()
    for issue, hits in sorted(KNOWN_HITS.items()):
        print(f"  known issue {issue} ({hits} examples): {KNOWN_ISSUES[issue]}", flush=True)
    print(f"fuzz {target}: OK", flush=True)


def main():
    global LAST_INPUT, STRICT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS) + ["all", "selftest-crash"])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--last-input", default=None)
    parser.add_argument("--strict", action="store_true",
                        help="do not tolerate the KNOWN_ISSUES (and generate their inputs)")
    args = parser.parse_args()
    LAST_INPUT = args.last_input
    STRICT = args.strict
    faulthandler.enable()
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    hvd.init()
    targets = sorted(TARGETS) if args.target == "all" else [args.target]
    for target in targets:
        run(target, args.examples, args.seed)
    hvd.shutdown()


if __name__ == "__main__":
    main()
