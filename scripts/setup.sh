#!/usr/bin/env bash
# Prepares a machine to run fusecomm: Open MPI (Debian's, when no MPI is on PATH), a virtual
# environment with the pinned packages, and fusecomm itself built and installed from this tree.
# Safe to run again: each step only does what is missing, and the install is refreshed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FUSECOMM_VENV:-$ROOT/.venv}"
cd "$ROOT"

if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
  echo "[setup] installing Open MPI (Debian packages openmpi-bin, libopenmpi-dev)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi

# `fusecomm testbed` (and its test, tests/test_testbed.py, which runs where we are root) needs
# iproute2's ip and tc.
if [ "$(id -u)" -eq 0 ] && { ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; }; then
  echo "[setup] installing iproute2 (ip, tc) for fusecomm testbed"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
# The requirements are installed once per change of the pinned list.
STAMP="$VENV/.fusecomm-requirements"
if ! cmp -s requirements/dev.txt "$STAMP" 2>/dev/null; then
  echo "[setup] installing pinned packages (requirements/dev.txt)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements/dev.txt
  cp requirements/dev.txt "$STAMP"
fi

# --- CUDA path (GPU work): NCCL's wheel, for building and running the CUDA path, where nvcc is.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  CUDA_STAMP="$VENV/.fusecomm-requirements-cuda"
  if ! cmp -s requirements/cuda.txt "$CUDA_STAMP" 2>/dev/null; then
    echo "[setup] installing the CUDA path's packages (requirements/cuda.txt)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements/cuda.txt
    cp requirements/cuda.txt "$CUDA_STAMP"
  fi
fi
# --- end CUDA path

echo "[setup] building and installing fusecomm"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall .
"$VENV/bin/fusecomm" check-build
