#!/bin/bash
# The init of a kernel-matrix guest (tests/kernels/run.sh copies it to /init
# of the initramfs that is the guest's whole root file system).  It runs the
# checks, writes one result line per check to the second serial port
# (/dev/ttyS1, a file on the host), then its logs as a base64 tar, and powers
# the machine off.  Everything else goes to the console (/dev/ttyS0).
#
# Result lines: "KERNEL <release>", "OK <check> <summary>",
# "FAIL <check> <summary>", "INFO <text>", and "DONE" at the end.
set -o pipefail
export PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/null >/dev/ttyS0 2>&1
stty -F /dev/ttyS1 raw -echo 2>/dev/null

# MODE (full, quick or pytest) and PYTEST_ARGS, written by run.sh.
. /etc/kernel-matrix.env
accel=tcg
for word in $(cat /proc/cmdline); do
    case "$word" in
        uringreactor.accel=*) accel=${word#*=} ;;
    esac
done

LOGS=/tmp/logs
mkdir -p "$LOGS"
report() { echo "$*" >/dev/ttyS1; echo "## $*"; }

finish() {
    report DONE
    {
        echo BEGIN-LOGS
        tar -C "$LOGS" -cz . | base64
        echo END-LOGS
    } >/dev/ttyS1
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}
trap finish EXIT

hostname kernel-guest
ip link set lo up
# An interface with a link-local IPv6 address, as real machines have.
insmod /kernel-modules/dummy.ko
sysctl -qw net.ipv6.conf.default.accept_dad=0
ip link add eth0 type dummy
ip link set eth0 up
# As much as the tests ask for (10,000 connections and their peers).
ulimit -n 65536
ulimit -u unlimited
# Emulated CPUs are about twenty times slower: scale the load tests down.
if [ -n "${TEST_SCALE:-}" ]; then
    export URINGREACTOR_TEST_SCALE=$TEST_SCALE
elif [ "$accel" = tcg ]; then
    export URINGREACTOR_TEST_SCALE=0.1
fi

report "KERNEL $(uname -r)"
report "INFO cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $accel, $(nproc) cpus, $(( $(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024 )) MiB"

cd /src

# check NAME SUMMARY-COMMAND -- COMMAND...: run COMMAND with its output in
# $LOGS/NAME.log; report OK or FAIL with the summary SUMMARY-COMMAND prints
# from that log.
check() {
    local name=$1 summary=$2
    shift 3
    local t0 rc=0 text
    t0=$(date +%s)
    echo "## running $name: $*"
    # Also to the console, which the host can follow (tail -f).
    "$@" 2>&1 | tee "$LOGS/$name.log" || rc=$?
    text=$(eval "$summary" <"$LOGS/$name.log" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')
    if [ $rc = 0 ]; then
        report "OK $name ($(( $(date +%s) - t0 ))s) $text"
    else
        report "FAIL $name ($(( $(date +%s) - t0 ))s, exit $rc) $text"
    fi
}

conformanceSummary='grep -E "^  (epoll|iouring) " | sed "s/  */ /g"; grep -E "pass on epoll but not" | sed "s/^ *//"'

check diagnostic 'grep -E "^(features in use|reactor):" ' -- \
    python -m uringreactor
cp "$LOGS/diagnostic.log" "$LOGS/diagnostic.txt"

pytestSummary='grep -E "^=* ?[0-9]+ (passed|failed|skipped|error)" | tail -1 | sed "s/=//g"'

if [ "$MODE" = pytest ]; then
    eval "pytestArgs=($PYTEST_ARGS)"
    check pytest "$pytestSummary" -- python -m pytest -p no:cacheprovider -rfEs \
        "${pytestArgs[@]}"
    exit
fi

check conformance "$conformanceSummary" -- \
    python tests/twisted_conformance.py --log-dir "$LOGS/conformance"
check conformance-disable-all "$conformanceSummary" -- \
    python tests/twisted_conformance.py --disable all --log-dir "$LOGS/conformance"
# The trial logs stay; their temporary directories (in memory) go.
rm -rf "$LOGS"/conformance/trial-*/

if [ "$MODE" = full ]; then
    check project "$pytestSummary" -- \
        python -m pytest tests -v -p no:cacheprovider -rfEs -o junit_family=xunit2 \
            --junitxml="$LOGS/project.xml"
    check programs 'grep -E "^(ok|FAIL)"' -- \
        tests/kernels/programs.sh
    check refusals 'grep -E "^(ok|FAIL|skip)"' -- \
        tests/kernels/refusals.sh
fi
