#!/usr/bin/env bash
# Runs the whole test suite against the installed fusecomm (set-up included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FUSECOMM_VENV:-$ROOT/.venv}"
# FUSECOMM_SETUP_DONE=1: the caller (.ci/run) has just run setup.sh; skip the second install.
[ "${FUSECOMM_SETUP_DONE:-0}" = 1 ] || bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# -P: do not put the source tree on sys.path, so the tests import the installed package.
exec "$VENV/bin/python" -P -m pytest tests "$@"
