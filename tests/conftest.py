"""Shared pytest set-up: the `mpirun` helper that multi-rank tests use.

A multi-rank test is a script in tests/mp/ that checks its results with plain asserts on every
rank; `run_ranks` launches it under mpirun and fails with every rank's output if any rank
failed or the run passed its time limit. The failure names the command that replays it (the
seed is among its arguments); docs/testing.md describes the environment."""
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MP_DIR = TESTS / "mp"
# The environment before any test initializes MPI in this process: Open MPI's singleton start
# adds OMPI_*/PMIX_* variables that would make a child mpirun think it runs inside a job.
CLEAN_ENV = dict(os.environ)


def mpirun_command(np_):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun is not on PATH: run scripts/setup.sh (installs Open MPI)")
    return [mpirun, "--oversubscribe", "-np", str(np_)]


# Bounds that turn a hang into a named failure within seconds: a data-plane wait that sees
# nothing move for this long (a peer that is not in the collective: a wrong neighbour, a rank
# that failed mid-collective) raises naming the round and the peer, and a tensor that some rank
# never submits fails every rank with the stall report. Generous for a loaded machine, short
# against the runs' own time limits. A test may override them through `env`.
HANG_BOUNDS = {"FUSECOMM_DATA_TIMEOUT_SECONDS": "20", "FUSECOMM_STALL_SHUTDOWN_SECONDS": "30"}


def mpi_env(extra=None):
    env = dict(CLEAN_ENV)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                # Several ranks share two cores: yield instead of spinning in MPI waits.
                "OMPI_MCA_mpi_yield_when_idle": "1",
                "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
                "PYTHONUNBUFFERED": "1"})
    env.update(HANG_BOUNDS)
    env.update(extra or {})
    return env


def test_seed():
    """A fresh seed for a randomized test, or FUSECOMM_TEST_SEED's to replay a failure."""
    return int(os.environ.get("FUSECOMM_TEST_SEED", random.randrange(1 << 16)))


test_seed.__test__ = False  # a helper, not a test


def replay_command(script, np_, args, env=None):
    """The shell command that reruns one multi-rank script as run_ranks ran it."""
    settings = {**HANG_BOUNDS, **(env or {})}
    words = [f"{k}={v}" for k, v in settings.items()]
    words += ["mpirun", "--oversubscribe", "-np", str(np_), "python",
              f"tests/mp/{script}", *map(str, args)]
    return " ".join(shlex.quote(w) for w in words)


def run_ranks(script, np_, *args, env=None, timeout=240, expect_fail=False):
    """Runs tests/mp/<script> on np_ ranks; returns its combined output."""
    cmd = mpirun_command(np_) + [sys.executable, str(MP_DIR / script), *map(str, args)]
    replay = f"replay: {replay_command(script, np_, args, env)}"
    try:
        proc = subprocess.run(cmd, env=mpi_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script} on {np_} ranks did not finish in {timeout}s (hang); {replay}\n"
                    f"{out[-6000:]}")
    if expect_fail:
        return proc.returncode, proc.stdout
    if proc.returncode != 0:
        pytest.fail(f"{script} on {np_} ranks exited {proc.returncode}; {replay}\n"
                    f"{proc.stdout[-8000:]}")
    return proc.stdout


@pytest.fixture
def ranks_runner():
    return run_ranks
