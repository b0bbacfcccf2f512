"""Shared pytest set-up: the `mpirun` helper that multi-rank tests use.

A multi-rank test is a script in tests/mp/ that checks its results with plain asserts on every
rank; `run_ranks` launches it under mpirun and fails with every rank's output if any rank
failed or the run passed its time limit."""
import os
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


def mpi_env(extra=None):
    env = dict(CLEAN_ENV)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                # Several ranks share two cores: yield instead of spinning in MPI waits.
                "OMPI_MCA_mpi_yield_when_idle": "1",
                "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_ranks(script, np_, *args, env=None, timeout=240, expect_fail=False):
    """Runs tests/mp/<script> on np_ ranks; returns its combined output."""
    cmd = mpirun_command(np_) + [sys.executable, str(MP_DIR / script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, env=mpi_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script} on {np_} ranks did not finish in {timeout}s (hang)\n{out[-6000:]}")
    if expect_fail:
        return proc.returncode, proc.stdout
    if proc.returncode != 0:
        pytest.fail(f"{script} on {np_} ranks exited {proc.returncode}\n{proc.stdout[-8000:]}")
    return proc.stdout


@pytest.fixture
def ranks_runner():
    return run_ranks
