#!/usr/bin/env bash
# What tests/container/run.sh --matrix runs inside each image: the
# diagnostic, Twisted's ReactorBuilder suites compared against epoll (every
# io_uring feature on, then all off) and the project's tests.  Unlike
# tests/run it runs no lint or type check (mypy does not run on PyPy) and not
# Twisted's whole suite (the kernel matrix and tests/run do).  Each step
# prints one summary line; the exit status is non-zero if any step failed.
#
#   tests/container/inside.sh [pytest arguments...]
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${URINGREACTOR_VENV:-$ROOT/.venv}/bin/python
LOG=${LOG_DIR:-/tmp/matrix-logs}
mkdir -p "$LOG"
cd "$ROOT"
failed=0

step() {
    local name=$1 summary=$2
    shift 2
    local started=$SECONDS
    if "$@" >"$LOG/$name.log" 2>&1; then
        echo "OK $name ($((SECONDS - started))s) $(eval "$summary" <"$LOG/$name.log" | tr '\n' ' ')"
    else
        failed=1
        echo "FAIL $name ($((SECONDS - started))s) $(eval "$summary" <"$LOG/$name.log" | tr '\n' ' ')"
        tail -30 "$LOG/$name.log" | sed "s/^/   $name| /"
    fi
}

conformance='grep -E "^  (epoll|iouring) " | sed "s/  */ /g"'
pytest='grep -E "^=* ?[0-9]+ (passed|failed|skipped|error)" | tail -1 | sed "s/=//g"'

echo "INFO $("$PY" -c 'import platform, sys, twisted; print(platform.python_implementation(), platform.python_version(), "Twisted", twisted.__version__)') liburing $(pkg-config --modversion liburing) kernel $(uname -r)"
step diagnostic 'grep -E "^(features in use|reactor):"' "$PY" -m uringreactor
step conformance "$conformance" "$PY" tests/twisted_conformance.py
step conformance-disable-all "$conformance" "$PY" tests/twisted_conformance.py --disable all
step project "$pytest" "$PY" -m pytest tests -q -p no:cacheprovider -rfE "$@"
exit $failed
