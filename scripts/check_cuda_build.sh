#!/usr/bin/env bash
# Compiles and links the CUDA/NCCL path (FUSECOMM_WITH_CUDA=1) in its own build tree,
# build/cuda-check, so that it never rots on machines without a GPU; the installed (CPU) build
# that the tests use is not touched. Then imports that module from a scratch copy of the package
# and runs a CPU collective with it: a CUDA build must load and work without a GPU or driver.
# Skips (exit 0) where nvcc is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FUSECOMM_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
cd "$ROOT"
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "[cuda-check] skipped: no nvcc on this machine"
  exit 0
fi
BUILD="$ROOT/build/cuda-check"
start=$(date +%s)
"$PY" -m cmake -S "$ROOT" -B "$BUILD" -DFUSECOMM_WITH_CUDA=1 -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DMPI_C_COMPILER="$(command -v mpicc)" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/package" >/dev/null
"$PY" -m cmake --build "$BUILD" --target _core -j "${FUSECOMM_BUILD_JOBS:-2}" >/dev/null
echo "[cuda-check] CUDA build compiled and linked in $(( $(date +%s) - start )) s"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cp -r "$ROOT/fusecomm" "$SCRATCH/fusecomm"
rm -f "$SCRATCH"/fusecomm/_core*.so
cp "$BUILD"/package/_core*.so "$BUILD"/package/_build_config.py "$SCRATCH/fusecomm/"
cd "$SCRATCH"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONPATH="$SCRATCH" "$PY" -P -c '
import numpy as np
import fusecomm
from fusecomm import ops
info = fusecomm._core.build_info()
assert info["cuda"] and info["nccl"], info
fusecomm.init()
x = np.arange(7, dtype=np.float32)
assert (ops.allreduce(x, op=fusecomm.Sum) == x).all()
fusecomm.shutdown()
print("[cuda-check] CUDA build imports and runs CPU collectives without a GPU:",
      "runtime", info["cuda_runtime_version"], "driver", info["cuda_driver_version"],
      "NCCL", info["nccl_version"].split(";")[0][:60])
'
