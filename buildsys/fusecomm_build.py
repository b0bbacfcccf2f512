"""fusecomm's PEP 517 build backend: setuptools', plus NCCL's wheel when the CUDA path is built.

`pip install .` builds in a throw-away environment holding only the build requirements. The
CUDA path needs NCCL's header at build time, and NCCL's wheel is where users get it, so when
CUDA is requested (FUSECOMM_WITH_CUDA=1, or auto on a machine with nvcc and a GPU driver) the
pinned `nvidia-nccl-cu13` (requirements/cuda.txt) joins the build requirements, and setup.py
adds it to the install requirements too: libnccl.so.2 is loaded from beside the installed
package at run time.
"""
import ctypes.util
import os
import shutil
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 (the hooks not overridden below)

ROOT = Path(__file__).resolve().parent.parent
CUDA_REQUIREMENTS = ROOT / "requirements" / "cuda.txt"
# cmake/cuda.cmake's auto rule looks for the driver library in the same places.
DRIVER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib")


def _nvcc_found():
    return bool(shutil.which("nvcc")) or os.access("/usr/local/cuda/bin/nvcc", os.X_OK)


def _driver_found():
    if any(Path(d, "libcuda.so.1").exists() for d in DRIVER_DIRS):
        return True
    return ctypes.util.find_library("cuda") is not None


def cuda_requested():
    """Whether this build compiles the CUDA path (the same rule as cmake/cuda.cmake)."""
    setting = os.environ.get("FUSECOMM_WITH_CUDA", "auto").strip()
    if setting == "1":
        return True
    if setting == "auto":
        return _nvcc_found() and _driver_found()
    return False  # "0"; anything else is refused by CMake with a message


def cuda_requirements():
    """The CUDA path's packages, pinned in requirements/cuda.txt (empty for a CPU build)."""
    if not cuda_requested():
        return []
    lines = CUDA_REQUIREMENTS.read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines
            if line.split("#", 1)[0].strip()]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + cuda_requirements()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + cuda_requirements()
