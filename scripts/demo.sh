#!/usr/bin/env bash
# The main job: a 4-rank training run wrapped by fusecomm, then the all-reduce benchmark table
# (fusecomm's engine next to MPI_Allreduce) at 2 ranks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FUSECOMM_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
mkdir -p out
if [ -f examples/pytorch_train.py ]; then
  echo "== PyTorch training on 4 ranks (examples/pytorch_train.py) =="
  "$VENV/bin/fusecomm" run -np 4 -- "$VENV/bin/python" -P examples/pytorch_train.py
fi
echo "== all-reduce benchmark, 2 ranks, 8 B to ${DEMO_MAX_BYTES:-64M} =="
"$VENV/bin/fusecomm" bench allreduce -np 2 --max-bytes "${DEMO_MAX_BYTES:-64M}" --quick \
  --json out/allreduce_demo.jsonl --plot out/allreduce_demo.png
