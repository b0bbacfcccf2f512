"""The CUDA kernels and CudaMemoryOps against the CPU kernels: tests/gpu/cuda_kernels_test.cc,
built with nvcc straight from csrc/ (no Python extension involved).

test_kernels_compile needs only nvcc, so it also runs on machines without a GPU; the run itself
is skipped there."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SOURCES = [CSRC / "reduce/cuda_kernels.cu", CSRC / "reduce/cpu_reduce.cc",
           CSRC / "common/types.cc", CSRC / "transport/cuda_memory.cc",
           ROOT / "tests/gpu/cuda_kernels_test.cc"]
# Native code for Ampere and Hopper (the H100/H200 test machines), plus PTX that newer GPUs
# compile at load time. FUSECOMM_NVCC_ARCH_FLAGS replaces these (e.g. "-arch=native").
ARCH_FLAGS = ["-gencode", "arch=compute_80,code=[sm_80,compute_80]",
              "-gencode", "arch=compute_90,code=sm_90"]
# Without a GPU nothing runs the binary: one architecture checks that it compiles, in half the
# time (the CI machines have none).
COMPILE_ONLY_ARCH_FLAGS = ["-gencode", "arch=compute_90,code=sm_90"]

# Runs in a child process: initialising the driver here would make later forks unsafe.
_PROBE = """
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    sys.exit(f"libcuda.so.1 cannot be loaded ({e})")
status = cuda.cuInit(0)
if status != 0:
    sys.exit(f"cuInit failed with CUresult {status}")
count = ctypes.c_int(0)
status = cuda.cuDeviceGetCount(ctypes.byref(count))
if status != 0 or count.value == 0:
    sys.exit(f"no CUDA device (cuDeviceGetCount: CUresult {status}, {count.value} devices)")
"""


def find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin/nvcc").is_file():
            return str(Path(home) / "bin/nvcc")
    return None


def gpu_unavailable_reason():
    """None when a CUDA GPU can run the test, else why not."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return None if proc.returncode == 0 else proc.stdout.strip() or "CUDA probe failed"


@pytest.fixture(scope="module")
def kernel_test_binary(tmp_path_factory):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin)")
    out = tmp_path_factory.mktemp("gpu") / "cuda_kernels_test"
    arch = os.environ.get("FUSECOMM_NVCC_ARCH_FLAGS")
    if arch:
        arch_flags = arch.split()
    else:
        arch_flags = ARCH_FLAGS if gpu_unavailable_reason() is None else COMPILE_ONLY_ARCH_FLAGS
    cmd = [nvcc, "-std=c++17", "-O2", "-DFUSECOMM_WITH_CUDA=1", f"-I{CSRC}", *arch_flags,
           "-Xcompiler", "-Wall,-Wextra", *map(str, SOURCES), "-o", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stdout[-8000:]}")
    return out


def test_kernels_compile(kernel_test_binary):
    assert kernel_test_binary.is_file()


def test_kernels_on_gpu(kernel_test_binary):
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no CUDA GPU: {reason}")
    proc = subprocess.run([str(kernel_test_binary)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-8000:]
