#!/usr/bin/env bash
# The Docker/podman round trip, with podman (which builds and runs the same
# Dockerfile as Docker):
#
#   0. install podman if missing; make the base image if no registry has it;
#      build the image from the Dockerfile;
#   1. run the test suite inside with --security-opt seccomp=unconfined:
#      everything must pass on the io_uring reactor;
#   2. run a small Twisted program with --reactor=iouring under podman's
#      default seccomp profile: it must fail with the error that names the
#      cause (seccomp) and the fix; and the image's default command (the
#      test suite) must stop at once with the diagnostic saying the same;
#   3. run the same program with the opt-in fallback
#      (URINGREACTOR_FALLBACK=epoll): it must work on epoll and warn once.
#
#   tests/container/run.sh            the whole round trip
#   tests/container/run.sh --quick    step 1 runs the project's own tests
#                                     only (CI's subset; see README.md)
#   tests/container/run.sh --matrix [IMAGE...]
#                                     the interpreter matrix instead (see
#                                     tests/container/matrix.sh)
#   tests/container/run.sh --wheel    the wheel round trip instead (see
#                                     tests/container/wheel.sh)
#
# Environment: BASE (base image; default localhost/debian:bookworm, made
# with debootstrap when missing), IMAGE (default uringreactor-test).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE=${BASE:-localhost/debian:bookworm}
IMAGE=${IMAGE:-uringreactor-test}
case "${1:-}" in
    --matrix) shift; exec "$ROOT/tests/container/matrix.sh" "$@" ;;
    --wheel) exec "$ROOT/tests/container/wheel.sh" ;;
esac
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
LOG=${LOG_DIR:-$ROOT/build/container}
mkdir -p "$LOG"
started=$(date +%s)
# shellcheck source=tests/container/common.sh
. "$ROOT/tests/container/common.sh"

needTools
ensureBase "$BASE" "$LOG"
echo "== building $IMAGE from the Dockerfile (base $BASE)"
buildImage "$IMAGE" "$BASE" "$LOG/build.log"
echo "   built in $(( $(date +%s) - started ))s"

PROGRAM=(/opt/uringreactor-venv/bin/python examples/echo_roundtrip.py --reactor=iouring)
RUN=("${PODMAN[@]}" run --rm "${LIMITS[@]}")

echo "== 1. test suite inside, --security-opt seccomp=unconfined"
if [ $QUICK = 1 ]; then
    inner=(/opt/uringreactor-venv/bin/python -m pytest tests -q -p no:cacheprovider)
else
    inner=(./tests/run)
fi
if "${RUN[@]}" --security-opt seccomp=unconfined "$IMAGE" "${inner[@]}" >"$LOG/step1.log" 2>&1; then
    echo "   passed: $(grep -E '^[0-9]+ passed' "$LOG/step1.log" | tail -1)"
    grep -E "every test|no test that passes" "$LOG/step1.log" | sed 's/^/   /' || true
else
    tail -40 "$LOG/step1.log"
    echo "   FAILED (log: $LOG/step1.log)"
    exit 1
fi

echo "== 2. --reactor=iouring under the default seccomp profile"
if "${RUN[@]}" "$IMAGE" "${PROGRAM[@]}" >"$LOG/step2.log" 2>&1; then
    cat "$LOG/step2.log"
    echo "   FAILED: the program ran although io_uring should be refused"
    exit 1
fi
if ! grep -q "IOUringUnavailable" "$LOG/step2.log" || ! grep -q "seccomp" "$LOG/step2.log"; then
    cat "$LOG/step2.log"
    echo "   FAILED: no clear error"
    exit 1
fi
grep "IOUringUnavailable" "$LOG/step2.log" | tail -1 | fold -s -w 100 | sed 's/^/   /'
if "${RUN[@]}" "$IMAGE" >"$LOG/step2-suite.log" 2>&1; then
    cat "$LOG/step2-suite.log"
    echo "   FAILED: the test suite ran although io_uring should be refused"
    exit 1
fi
if ! grep -q "reactor: unavailable" "$LOG/step2-suite.log" \
        || ! grep -q "seccomp" "$LOG/step2-suite.log" \
        || grep -q "SKIPPED" "$LOG/step2-suite.log"; then
    cat "$LOG/step2-suite.log"
    echo "   FAILED: the default command did not stop with the diagnostic"
    exit 1
fi
echo "   the image's default command stops at the diagnostic ($(wc -l <"$LOG/step2-suite.log") lines):"
grep -A1 "reactor: unavailable" "$LOG/step2-suite.log" | tail -1 | fold -s -w 100 | sed 's/^/   /'

echo "== 3. the same program with URINGREACTOR_FALLBACK=epoll"
if ! "${RUN[@]}" -e URINGREACTOR_FALLBACK=epoll "$IMAGE" "${PROGRAM[@]}" >"$LOG/step3.log" 2>&1; then
    cat "$LOG/step3.log"
    echo "   FAILED"
    exit 1
fi
warnings=$(grep -c "IOUringFallbackWarning" "$LOG/step3.log" || true)
if ! grep -q "reactor: EPollReactor" "$LOG/step3.log" || [ "$warnings" != 1 ]; then
    cat "$LOG/step3.log"
    echo "   FAILED: expected the epoll reactor and exactly one warning"
    exit 1
fi
sed 's/^/   /' "$LOG/step3.log" | fold -s -w 100

echo "== container round trip passed in $(( $(date +%s) - started ))s"
