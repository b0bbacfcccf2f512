#!/usr/bin/env bash
# Runs the whole test suite against the installed fusecomm (set-up included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FUSECOMM_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# -P: do not put the source tree on sys.path, so the tests import the installed package.
exec "$VENV/bin/python" -P -m pytest tests "$@"
