"""Builds fusecomm._core with CMake.

MPI: the build uses the `mpicc` found on PATH (a cluster's own MPI, or Debian's Open MPI that
scripts/setup.sh installs) and links the extension to that MPI's shared library, which stays
where it is after the isolated build environment is thrown away.

Settings (environment): FUSECOMM_WITH_CUDA=auto|0|1, FUSECOMM_SANITIZE=address,undefined,
FUSECOMM_BUILD_TYPE=Release|Debug|RelWithDebInfo, FUSECOMM_BUILD_JOBS=N.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "buildsys"))
from fusecomm_build import cuda_requirements  # noqa: E402  (the build backend's CUDA rule)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def cmake_executable():
    try:
        import cmake  # the PyPI cmake package, a build requirement

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if not found:
            sys.exit("fusecomm: CMake >= 3.18 is needed to build (pip install cmake)")
        return found


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not shutil.which("mpicc"):
            sys.exit(
                "fusecomm: no MPI found (mpicc is not on PATH). Install Open MPI "
                "(Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev; scripts/setup.sh "
                "does this) or put your cluster's MPI compiler wrapper on PATH."
            )
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        import pybind11

        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('FUSECOMM_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFUSECOMM_WITH_CUDA={os.environ.get('FUSECOMM_WITH_CUDA', 'auto')}",
            f"-DFUSECOMM_SANITIZE={os.environ.get('FUSECOMM_SANITIZE', '')}",
            f"-DMPI_C_COMPILER={shutil.which('mpicc')}",
        ]
        cmake = cmake_executable()
        subprocess.run([cmake, *args], check=True)
        jobs = os.environ.get("FUSECOMM_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_core", "-j", jobs],
                       check=True)


setup(ext_modules=[CMakeExtension("fusecomm._core")], cmdclass={"build_ext": CMakeBuild},
      install_requires=["numpy>=1.22", *cuda_requirements()])
