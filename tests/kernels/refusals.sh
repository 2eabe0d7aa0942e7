#!/usr/bin/env bash
# The ways a kernel refuses io_uring, provoked for real (run as root, in a
# kernel-matrix guest: it changes sysctls).  Each refusal must give the
# error that names the cause and the fix, from python -m uringreactor and
# from a program installing the reactor, and with URINGREACTOR_FALLBACK=epoll
# the program must run on epoll with exactly one warning.
#
#   - kernel.io_uring_disabled=2 (everyone refused) and =1 (only root and
#     kernel.io_uring_group allowed), where the kernel has it (6.6 and newer);
#   - a locked-memory limit too small for any ring, for a user without
#     CAP_IPC_LOCK, and the default 64 KiB of kernels before 5.16, which
#     must still run (with a smaller ring).
#
# Prints "ok ...", "skip ..." or "FAIL ..." per check; exits non-zero if any
# failed.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python}
failed=0
out=$(mktemp)
trap 'rm -f "$out"; [ -w /proc/sys/kernel/io_uring_disabled ] && echo 0 >/proc/sys/kernel/io_uring_disabled' EXIT

ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; sed 's/^/    | /' "$out"; failed=1; }

# run AS MEMLOCK_KIB [NAME=VALUE...] COMMAND...: run COMMAND as root or as
# nobody (no capabilities) with that environment and, unless MEMLOCK_KIB is
# "-", that locked-memory limit; output in $out.
run() {
    local as=$1 memlock=$2
    shift 2
    local vars=()
    while [[ "${1:-}" == *=* ]]; do vars+=("$1"); shift; done
    local drop=()
    if [ "$as" = nobody ]; then
        drop=(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all
              --bounding-set=-all)
    fi
    bash -c '[ "$0" = - ] || ulimit -l "$0"; exec "$@"' "$memlock" \
        env "${vars[@]}" "${drop[@]}" "$@" >"$out" 2>&1
}

# expectRefusal WHAT AS MEMLOCK CAUSE FIX: the diagnostic and a program
# both refuse with CAUSE and FIX; the fallback runs on epoll, warning once.
expectRefusal() {
    local what=$1 as=$2 memlock=$3 cause=$4 fix=$5
    if run "$as" "$memlock" "$PY" -m uringreactor; then
        fail "$what: python -m uringreactor exited 0"
        return
    fi
    if ! grep -q "reactor: unavailable" "$out" || ! grep -qF "$cause" "$out" \
            || ! grep -qF "$fix" "$out"; then
        fail "$what: the diagnostic does not name '$cause' and '$fix'"
        return
    fi
    if run "$as" "$memlock" "$PY" examples/echo_roundtrip.py --reactor=iouring; then
        fail "$what: the program ran on io_uring"
        return
    fi
    if ! grep -q "IOUringUnavailable" "$out" || ! grep -qF "$cause" "$out"; then
        fail "$what: the program's error does not name '$cause'"
        return
    fi
    if ! run "$as" "$memlock" URINGREACTOR_FALLBACK=epoll \
            "$PY" examples/echo_roundtrip.py --reactor=iouring; then
        fail "$what: the epoll fallback did not run"
        return
    fi
    if ! grep -q "reactor: EPollReactor" "$out" \
            || [ "$(grep -c IOUringFallbackWarning "$out")" != 1 ]; then
        fail "$what: expected the epoll reactor and exactly one warning"
        return
    fi
    ok "$what: refused naming '$cause', fallback to epoll with one warning"
}

sysctl=/proc/sys/kernel/io_uring_disabled
if [ -w $sysctl ]; then
    echo 2 >$sysctl
    expectRefusal "io_uring_disabled=2 (root)" root - \
        "kernel.io_uring_disabled is 2" "sysctl -w kernel.io_uring_disabled=0"
    echo 1 >$sysctl
    expectRefusal "io_uring_disabled=1 (unprivileged user)" nobody - \
        "kernel.io_uring_disabled is 1" "kernel.io_uring_group"
    if run root - "$PY" -m uringreactor; then
        ok "io_uring_disabled=1: root may still use io_uring"
    else
        fail "io_uring_disabled=1: root was refused"
    fi
    echo 0 >$sysctl
else
    echo "skip kernel.io_uring_disabled: this kernel has no such sysctl (Linux 6.6 and newer)"
fi

# Locked memory, for a user without CAP_IPC_LOCK.
if run nobody 64 "$PY" -m uringreactor; then
    ring=$(sed -n 's/^ring: *\([0-9]*\) submission.*/\1/p' "$out")
    ok "RLIMIT_MEMLOCK 64 KiB (unprivileged user): runs, ring of $ring entries"
else
    fail "RLIMIT_MEMLOCK 64 KiB (unprivileged user): refused"
fi
if run nobody 4 "$PY" -m uringreactor; then
    ok "RLIMIT_MEMLOCK 4 KiB (unprivileged user): runs; this kernel does not charge rings to it"
else
    expectRefusal "RLIMIT_MEMLOCK 4 KiB (unprivileged user)" nobody 4 \
        "RLIMIT_MEMLOCK, here 4 KiB" "ulimit -l"
fi
exit $failed
