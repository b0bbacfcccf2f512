"""Hypothesis fuzzing of the public NumPy API, one process (size 1): garbage in, either a correct
result or a TypeError/ValueError/NotImplementedError/CollectiveError out, never a crash.

The fuzzing itself runs in tests/fuzz_api_driver.py, in a subprocess per target, so a segfault
or abort of the core fails one test with the input that caused it instead of killing pytest.

Environment knobs for longer campaigns:
  FUSECOMM_FUZZ_SCALE=10   ten times as many examples per target
  FUSECOMM_FUZZ_SEED=1234  a fixed seed (the seed is printed on failure; the default is random)
Reproduce a failure: python tests/fuzz_api_driver.py TARGET --examples N --seed S
(add --strict to also fail on the KNOWN_ISSUES listed in the driver).
"""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import TESTS, mpi_env

DRIVER = TESTS / "fuzz_api_driver.py"
SCALE = float(os.environ.get("FUSECOMM_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("FUSECOMM_FUZZ_SEED", random.randrange(1 << 30)))

# Examples per target, sized so the whole file stays well under a minute on two cores.
TARGETS = {
    "allreduce": 150,
    "grouped_allreduce": 80,
    "allgather": 100,
    "broadcast": 100,
    "reducescatter": 80,
    "alltoall": 120,
    "handles_and_barrier": 100,
    "objects": 120,
    "init_and_process_sets": 80,
    "async_lifecycle": 50,
    "threads": 40,
}


def run_driver(target, examples, seed, tmp_path, *extra, timeout=None):
    """Runs the driver; returns (returncode, output, last input) - returncode None on a hang."""
    last = tmp_path / f"last_input_{target}.txt"
    cmd = [sys.executable, str(DRIVER), target, "--examples", str(examples), "--seed", str(seed),
           "--last-input", str(last), *extra]
    timeout = timeout or max(60, examples * 2)
    try:
        proc = subprocess.run(cmd, env=mpi_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = None
    last_input = last.read_text(errors="replace").strip() if last.exists() else "<none recorded>"
    return code, out, last_input


def describe_failure(target, examples, seed, code, out, last_input):
    repro = f"python tests/fuzz_api_driver.py {target} --examples {examples} --seed {seed}"
    if code is None:
        head = f"fuzz target {target!r} hung (no answer within the time limit)"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        head = f"fuzz target {target!r}: the process CRASHED ({name})"
    elif "Falsifying example" in out or "PropertyFailure" in out:
        head = f"fuzz target {target!r}: the property failed"
    else:
        head = f"fuzz target {target!r}: the process exited {code} (abort or fatal error?)"
    return (f"{head}\nlast input attempted (for a crash or a hang: the one that caused it): "
            f"{last_input}\nreproduce: {repro}\n"
            f"---- output (tail) ----\n{out[-7000:]}")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target, tmp_path):
    examples = max(1, int(TARGETS[target] * SCALE))
    code, out, last_input = run_driver(target, examples, SEED, tmp_path)
    if code != 0 or f"fuzz {target}: OK" not in out:
        pytest.fail(describe_failure(target, examples, SEED, code, out, last_input),
                    pytrace=False)


def test_a_crash_is_reported_with_its_input(tmp_path):
    """The harness itself: a segfault in the driver becomes a failure naming the input."""
    code, out, last_input = run_driver("selftest-crash", 1, 0, tmp_path)
    assert code is not None and code < 0, (code, out)
    text = describe_failure("selftest-crash", 1, 0, code, out, last_input)
    assert "CRASHED (SIGSEGV)" in text and "reading address 0" in text, text
    assert "reproduce: python tests/fuzz_api_driver.py selftest-crash" in text, text


# ---- regressions: bugs the fuzzing found (fixed), each pinned by its reproducer ---------------

REPRODUCERS = """
import json, pickle, numpy as np, fusecomm as hvd
ALLOWED = (TypeError, ValueError, NotImplementedError, hvd.CollectiveError)
hvd.init()
results = {}
def case(key, fn, check=None):
    try:
        value = fn()
    except ALLOWED as e:
        results[key] = "ok: " + type(e).__name__ if str(e) else "empty message"
        return
    except Exception as e:
        results[key] = f"bad: {type(e).__name__}: {e}"
        return
    results[key] = "ok: returned" if check and check(value) else f"bad: returned {value!r}"

case("overflow-scale", lambda: hvd.allreduce(np.ones(2), prescale_factor=10 ** 400))
case("overflow-root", lambda: hvd.broadcast(np.ones(2), root_rank=float("inf")))
case("pickle-errors", lambda: hvd.broadcast_object(lambda: 0))
case("non-native-byte-order",
     lambda: hvd.allreduce(np.zeros(1, ">f2"), op=hvd.Sum, postscale_factor=-3.0),
     lambda v: np.array_equal(v.astype("<f2"), np.array([-0.0], "<f2")))
case("alltoall-empty-splits", lambda: hvd.alltoall(np.arange(4), splits=np.array([], np.int64)))
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def reproducers():
    proc = subprocess.run([sys.executable, "-P", "-c", REPRODUCERS], env=mpi_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stdout
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("key", ["overflow-scale", "overflow-root"])
def test_fixed_overflow_conversion(reproducers, key):
    assert reproducers[key].startswith("ok"), reproducers[key]


def test_fixed_pickle_errors(reproducers):
    assert reproducers["pickle-errors"].startswith("ok"), reproducers["pickle-errors"]


def test_fixed_non_native_byte_order(reproducers):
    value = reproducers["non-native-byte-order"]
    assert value.startswith("ok"), value


def test_fixed_alltoall_empty_splits(reproducers):
    value = reproducers["alltoall-empty-splits"]
    assert value.startswith("ok"), value


def test_fixed_init_duplicate_ranks():
    code = textwrap.dedent("""
        import fusecomm as hvd
        try:
            hvd.init(comm=[0, 0])
        except ValueError as e:
            print("raised", e)
    """)
    proc = subprocess.run([sys.executable, "-P", "-c", code], env=mpi_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0 and "raised" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_fixed_cycle_time_not_finite(value):
    code = textwrap.dedent(f"""
        import fusecomm as hvd
        try:
            hvd.init(cycle_time_ms={value!r})
        except ValueError as e:
            print("raised", e)
        else:
            hvd.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-P", "-c", code], env=mpi_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0 and "raised" in proc.stdout, proc.stdout[-2000:]
