"""Whether the GPU tests can run here, and the mpirun helper for tests/gpu/mp scripts.

Shared by the GPU tests (import it; pytest puts tests/gpu on sys.path). Probes run in a child
process so that this process never initialises CUDA (forks stay safe)."""
import functools
import subprocess
import sys
from pathlib import Path

import pytest

GPU_MP_DIR = Path(__file__).resolve().parent / "mp"

_PROBE = """
import sys
import fusecomm
if not fusecomm._core.build_info()["cuda"]:
    sys.exit("fusecomm was built without CUDA (build with FUSECOMM_WITH_CUDA=1)")
try:
    import torch
except ImportError:
    sys.exit("torch is not installed")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch (torch " + torch.__version__ + ")")
"""


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    """None when a CUDA build of fusecomm, torch with CUDA and a GPU are all here, else why not."""
    proc = subprocess.run([sys.executable, "-P", "-c", _PROBE], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return None if proc.returncode == 0 else (proc.stdout.strip().splitlines() or ["probe failed"])[-1]


def requires_gpu(fn):
    """Skips the test, with the reason, where the GPU path cannot run."""
    reason = gpu_unavailable_reason()
    return pytest.mark.skipif(reason is not None, reason=f"needs a GPU: {reason}")(fn)


def run_gpu_ranks(script, np_, *args, env=None, timeout=600):
    """Runs tests/gpu/mp/<script> on np_ ranks (all on this machine's GPUs; ranks beyond the
    GPU count share them, which makes fusecomm stage device tensors through MPI)."""
    from conftest import mpi_env, mpirun_command

    # Local ranks inherit mpirun's environment, `env` included.
    cmd = mpirun_command(np_) + [sys.executable, str(GPU_MP_DIR / script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, env=mpi_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script} on {np_} ranks did not finish in {timeout}s (hang)\n{out[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{script} on {np_} ranks exited {proc.returncode}\n{proc.stdout[-8000:]}")
    return proc.stdout
