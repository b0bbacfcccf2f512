#!/usr/bin/env bash
# A GPU user's install, checked on a machine without a GPU: `FUSECOMM_WITH_CUDA=1 pip install .`
# in a fresh virtual environment (pip's isolated build gets NCCL's wheel from the build backend,
# buildsys/fusecomm_build.py), then the installed CUDA build is imported and runs a CPU
# collective: it must load and work without a GPU or driver. Keeps the CUDA/NCCL path from
# rotting. Skips (exit 0) where nvcc is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "[cuda-check] skipped: no nvcc on this machine"
  exit 0
fi
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
start=$(date +%s)
python3 -m venv "$SCRATCH/venv"
FUSECOMM_WITH_CUDA=1 "$SCRATCH/venv/bin/pip" install -q --disable-pip-version-check "$ROOT"
echo "[cuda-check] FUSECOMM_WITH_CUDA=1 pip install . in a fresh venv: $(( $(date +%s) - start )) s"
cd "$SCRATCH"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$SCRATCH/venv/bin/python" -P -c '
import importlib.metadata as md
import numpy as np
import fusecomm
from fusecomm import ops
info = fusecomm._core.build_info()
assert info["cuda"] and info["nccl"], info
assert any(r.startswith("nvidia-nccl-cu13") for r in md.requires("fusecomm")), md.requires("fusecomm")
fusecomm.init()
x = np.arange(7, dtype=np.float32)
assert (ops.allreduce(x, op=fusecomm.Sum) == x).all()
fusecomm.shutdown()
print("[cuda-check] CUDA build imports and runs CPU collectives without a GPU:",
      "runtime", info["cuda_runtime_version"], "driver", info["cuda_driver_version"],
      "NCCL", info["nccl_version"].split(";")[0][:60])
'
