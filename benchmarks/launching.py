"""Running one benchmark launch (mpirun or fusecomm run) and failing the benchmark clearly."""
import subprocess
import sys


def run_launch(cmd, env, timeout, what):
    """The launch's combined output; exits with `what` named when it times out or fails."""
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{what} did not finish in {timeout}s")
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout
