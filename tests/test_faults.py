"""Fault tests: a rank that dies, raises, exits or shuts down early. Every other rank gets an
error naming it within a bounded time (3 s liveness timeout here), and `fusecomm run` exits
non-zero naming the first rank that failed. Each run is bounded by a timeout: a hang fails."""
import subprocess
import sys

import pytest

from conftest import CLEAN_ENV, MP_DIR


def fusecomm_run(ranks, *args, timeout=120):
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", str(ranks),
           "--liveness-timeout-seconds", "3", "--", sys.executable, *map(str, args)]
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, env=CLEAN_ENV)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hang: {' '.join(cmd)}\n{e.stdout}")


@pytest.mark.parametrize("mode, victim, ranks", [
    ("kill", 1, 3), ("kill", 0, 3), ("kill", 2, 4), ("raise", 1, 2), ("exit", 0, 3),
    ("shutdown", 1, 3), ("kill-in-shm", 0, 3),
])
def test_rank_leaving_is_an_error_on_every_other_rank(mode, victim, ranks):
    proc = fusecomm_run(ranks, MP_DIR / "fault_rank_death.py", mode, victim)
    survivors = ranks - 1
    assert proc.stdout.count("DETECTED") == survivors, proc.stdout
    # Every survivor's later call raised at once naming the victim (printed only then).
    assert proc.stdout.count("LATER CALLS FAIL") == survivors, proc.stdout
    for line in proc.stdout.splitlines():
        if "DETECTED" in line:
            seconds = float(line.split("after ")[1].split("s:")[0])
            assert seconds < 15, line  # 3 s timeout + slack for a loaded machine
    if mode != "shutdown":
        assert proc.returncode != 0, proc.stdout
        assert f"fusecomm run: the first rank to fail: rank {victim}" in proc.stdout, proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout
