#!/usr/bin/env bash
# Builds the core with AddressSanitizer + UndefinedBehaviorSanitizer and runs the multi-rank core
# tests (tests/mp/core_collectives.py and core_errors.py, on 2 and 3 ranks; also with a tiny
# fusion buffer and no cache, with the timeline on, core_timeline.py, core_algorithms.py and
# core_join.py where present) against it, then a short single-process pass of the API fuzzer
# (tests/fuzz_api_driver.py). Fails if any run fails or any sanitizer report appears in any output.
#
#   scripts/sanitize.sh                # build + run everything
#   SANITIZE_SKIP_BUILD=1 scripts/sanitize.sh   # reuse build/asan
#   SANITIZE_CLEAN=1 scripts/sanitize.sh        # rebuild build/asan from scratch
#   SANITIZE_FUZZ_EXAMPLES=0 scripts/sanitize.sh  # skip the fuzz pass (default 40 per target)
#   SANITIZERS=address,undefined,float-cast-overflow SANITIZE_BUILD_DIR=build/asan-fco \
#     scripts/sanitize.sh                                # other -fsanitize= lists, own build dir
#
# The sanitized _core lands in build/asan/pkg/fusecomm/ beside a copy of the Python package, and
# the tests import it from there (PYTHONPATH). Python itself is not instrumented, so the ASan
# runtime is preloaded into the ranks (mpirun -x LD_PRELOAD=..., not into mpirun itself); leak
# detection is off because CPython frees little at exit by design.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${FUSECOMM_PYTHON:-$ROOT/.venv/bin/python}"
BUILD="${SANITIZE_BUILD_DIR:-$ROOT/build/asan}"
PKG="$BUILD/pkg"
LOGS="$BUILD/logs"
SANITIZERS="${SANITIZERS:-address,undefined}"
FUZZ_EXAMPLES="${SANITIZE_FUZZ_EXAMPLES:-40}"
JOBS="${JOBS:-2}"
cd "$ROOT"

if [ -n "${SANITIZE_CLEAN:-}" ]; then
  rm -rf "$BUILD"
fi
if [ -z "${SANITIZE_SKIP_BUILD:-}" ]; then
  echo "[sanitize] configuring $BUILD (FUSECOMM_SANITIZE=$SANITIZERS)"
  cmake -S "$ROOT" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFUSECOMM_SANITIZE="$SANITIZERS" \
    -DFUSECOMM_WITH_CUDA=0 \
    -DPython_EXECUTABLE="$PY" \
    -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PKG/fusecomm" >/dev/null
  echo "[sanitize] building _core"
  mkdir -p "$BUILD"
  if ! cmake --build "$BUILD" --target _core -j "$JOBS" >"$BUILD/build.log" 2>&1; then
    grep -E -B2 -A6 "error|Error" "$BUILD/build.log" | head -60
    echo "[sanitize] build failed (full log: $BUILD/build.log)"
    exit 2
  fi
  grep -E "warning:" "$BUILD/build.log" | sort -u | head -20 || true
fi
# The package's Python files beside the sanitized _core (never the in-tree _core or the
# _build_config.py CMake wrote for this build).
mkdir -p "$PKG/fusecomm"
(cd "$ROOT/fusecomm" && find . -name '*.py' ! -name '_build_config.py' ! -path '*/__pycache__/*' -print0 |
  while IFS= read -r -d '' f; do mkdir -p "$PKG/fusecomm/$(dirname "$f")"; cp "$f" "$PKG/fusecomm/$f"; done)

LIBASAN="$(gcc -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || { echo "[sanitize] no libasan.so from gcc -print-file-name"; exit 2; }
# libstdc++ preloaded too: python does not link it, and ASan resolves the real __cxa_throw when
# it starts; without it the first C++ exception dies in "CHECK failed ... real___cxa_throw".
LIBSTDCXX="$(gcc -print-file-name=libstdc++.so)"
PRELOAD="$LIBASAN $(readlink -f "$LIBSTDCXX")"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0:strict_init_order=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PKG"
# Open MPI's memory patcher hooks malloc/free; leave them to ASan.
export OMPI_MCA_memory="^patcher"
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

# Which _core is imported (must be the sanitized one).
# (From another directory: `python -c` puts the current one first on sys.path; the test scripts
# run from tests/mp and tests/, where no fusecomm/ shadows the copy.)
CORE="$(cd "$LOGS" && LD_PRELOAD="$PRELOAD" "$PY" -c 'import fusecomm._core as c; print(c.__file__)' 2>&1 || true)"
case "$(printf '%s' "$CORE" | tail -1)" in
  "$PKG"/fusecomm/_core*) echo "[sanitize] importing $(printf '%s' "$CORE" | tail -1)" ;;
  *) printf '%s\n' "$CORE" | tail -20
     echo "[sanitize] the sanitized _core in $PKG/fusecomm could not be imported (above)"; exit 2 ;;
esac

REPORT_RE='ERROR: AddressSanitizer|Sanitizer: CHECK failed|AddressSanitizer:DEADLYSIGNAL|runtime error:|UndefinedBehaviorSanitizer|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer'
failures=0
declare -a SUMMARY

run_case() {  # name, timeout seconds, command...
  local name="$1" limit="$2"; shift 2
  local log="$LOGS/$name.log" start end status reports
  start=$(date +%s)
  set +e
  timeout "$limit" "$@" >"$log" 2>&1
  status=$?
  set -e
  end=$(date +%s)
  reports=$(grep -Ec "$REPORT_RE" "$log" || true)
  local verdict="ok"
  if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
    verdict="FAILED (exit $status, $reports sanitizer report lines)"
    failures=$((failures + 1))
    echo "---- $name: $verdict; log $log ----"
    grep -E -A30 "$REPORT_RE" "$log" | head -80 || tail -40 "$log"
  fi
  SUMMARY+=("$(printf '%-34s %5ss  %s' "$name" "$((end - start))" "$verdict")")
  echo "[sanitize] $name: $verdict ($((end - start)) s)"
}

MPIRUN=(mpirun --oversubscribe -x "LD_PRELOAD=$PRELOAD" -x ASAN_OPTIONS -x UBSAN_OPTIONS
        -x PYTHONPATH -x PYTHONUNBUFFERED -x OMPI_MCA_memory)
SEED="${SANITIZE_SEED:-$RANDOM}"
for np_ in 2 3; do
  run_case "core_collectives.np$np_" 1200 "${MPIRUN[@]}" -np "$np_" "$PY" tests/mp/core_collectives.py "$SEED"
  run_case "core_errors.np$np_" 900 "${MPIRUN[@]}" -np "$np_" "$PY" tests/mp/core_errors.py
done
# The same collectives with a tiny fusion buffer and no response cache (other engine paths).
run_case "core_collectives.np3.small_fusion_no_cache" 1200 "${MPIRUN[@]}" -np 3 \
  -x FUSECOMM_FUSION_THRESHOLD=4096 -x FUSECOMM_CACHE_CAPACITY=0 \
  "$PY" tests/mp/core_collectives.py "$SEED"
# The timeline writer inside the engine (csrc/timeline), started from Python and from the
# environment, and the other engine paths the multi-rank suite has (when their scripts exist).
if [ -f tests/mp/core_timeline.py ]; then
  run_case "core_timeline.np3" 900 "${MPIRUN[@]}" -np 3 "$PY" tests/mp/core_timeline.py \
    "$LOGS/timeline.np3.json"
  run_case "core_collectives.np2.env_timeline" 1200 "${MPIRUN[@]}" -np 2 \
    -x FUSECOMM_TIMELINE="$LOGS/env_timeline.np2.json" "$PY" tests/mp/core_collectives.py "$SEED"
fi
if [ -f tests/mp/core_algorithms.py ]; then
  run_case "core_algorithms.np3.local2" 1200 "${MPIRUN[@]}" -np 3 -x FUSECOMM_LOCAL_SIZE=2 \
    "$PY" tests/mp/core_algorithms.py "$SEED"
fi
if [ -f tests/mp/core_join.py ]; then
  run_case "core_join.np3" 900 "${MPIRUN[@]}" -np 3 "$PY" tests/mp/core_join.py
fi
if [ "$FUZZ_EXAMPLES" -gt 0 ]; then
  run_case "fuzz_api_driver.all" 1200 env LD_PRELOAD="$PRELOAD" \
    "$PY" tests/fuzz_api_driver.py all --examples "$FUZZ_EXAMPLES" --seed "$SEED" \
    --last-input "$LOGS/fuzz_last_input.txt"
fi

echo
echo "sanitizers: $SANITIZERS (gcc $(gcc -dumpfullversion)), seed $SEED, logs in $LOGS"
printf '%s\n' "${SUMMARY[@]}"
if [ "$failures" -ne 0 ]; then
  echo "[sanitize] FAILED: $failures run(s) failed or produced sanitizer reports"
  exit 1
fi
echo "[sanitize] OK: no sanitizer reports, every run passed"
