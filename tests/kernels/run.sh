#!/usr/bin/env bash
# The kernel matrix: boot Debian's own kernel packages in QEMU and run the
# project's checks inside each, on the kernel users run rather than on the
# host's.
#
#   tests/kernels/run.sh                  every kernel, every check
#   tests/kernels/run.sh 5.10 6.1         only these kernels
#   tests/kernels/run.sh --quick [...]    only the ReactorBuilder comparison
#   tests/kernels/run.sh --pytest "ARGS" [...]
#                                         only the diagnostic and pytest ARGS
#                                         (to chase one failure)
#
# Each guest runs, from tests/kernels/guest.sh: the diagnostic
# (python -m uringreactor), Twisted's ReactorBuilder suites compared with
# epoll (every feature, then URINGREACTOR_DISABLE=all), the project's own
# tests (pytest, not stopping at a failure; load tests scaled down by
# URINGREACTOR_TEST_SCALE), twistd web with curl and twistd dns with dig,
# and the refusals (kernel.io_uring_disabled where the kernel has it, a
# small RLIMIT_MEMLOCK where rings are charged to it).  It prints one line
# per kernel and a last line "kernels: 5.10=ok 6.1=ok ..." and exits
# non-zero if anything failed.
#
# The kernels (vmlinuz from linux-image-*.deb, fetched through a private apt
# configuration: the host's sources are left alone), a bookworm root file
# system with the project's dependencies (debootstrap), and the decision
# whether KVM works are cached in $URINGREACTOR_KERNEL_CACHE (default
# build/kernels), so a second run starts in seconds.  The guest's root file
# system is its initramfs, so the kernels need no modules.  On hosts where a
# KVM guest hangs (nested virtualisation), QEMU emulates the CPU (TCG):
# about 20 times slower, hence the scaled-down load tests.
#
# Environment: URINGREACTOR_KERNEL_CACHE, MIRROR (default
# http://deb.debian.org/debian), GUEST_TEST_SCALE (the load tests' scale
# in the guests; default 0.1 under emulation, 1 with KVM), GUEST_MEMORY (MiB, default 8192: the root file system
# lives in it),
# GUEST_TIMEOUT (seconds per guest; default 3600, 1800 with --quick),
# ACCEL (kvm or tcg: skip the probe).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/kernels"
CACHE=${URINGREACTOR_KERNEL_CACHE:-$ROOT/build/kernels}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}
MEMORY=${GUEST_MEMORY:-8192}

# label, the Debian suite whose linux-image-amd64 provides it, and the
# version prefix expected there.  "7.3" is the newest Debian ships
# (trixie-backports); when backports moves on, update this line.
KERNEL_TABLE=(
    "5.10 bullseye 5.10."
    "6.1 bookworm 6.1."
    "6.12 trixie 6.12."
    "7.3 trixie-backports 7.3."
)

MODE=full
PYTEST_ARGS=""
WANTED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --pytest) MODE=pytest; PYTEST_ARGS=${2:?--pytest needs arguments}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) WANTED+=("$1") ;;
    esac
    shift
done
ALL_LABELS=()
for row in "${KERNEL_TABLE[@]}"; do ALL_LABELS+=("${row%% *}"); done
[ ${#WANTED[@]} -gt 0 ] || WANTED=("${ALL_LABELS[@]}")
for w in "${WANTED[@]}"; do
    case " ${ALL_LABELS[*]} " in
        *" $w "*) ;;
        *) echo "unknown kernel $w (known: ${ALL_LABELS[*]})" >&2; exit 2 ;;
    esac
done
if [ "$MODE" != full ]; then
    TIMEOUT=${GUEST_TIMEOUT:-1800}
else
    TIMEOUT=${GUEST_TIMEOUT:-3600}
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: debootstrap and chroot need it" >&2
    exit 1
fi
mkdir -p "$CACHE"
started=$(date +%s)
say() { echo "== $*"; }

# -- host tools -------------------------------------------------------------

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v cpio >/dev/null || need+=(cpio)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}" >/dev/null
fi

# -- kernels ----------------------------------------------------------------

APTDIR="$CACHE/apt"
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root"
)

aptUpdate() {
    [ -f "$APTDIR/updated" ] && return
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    : >"$APTDIR/sources.list"
    local row suite
    for row in "${KERNEL_TABLE[@]}"; do
        read -r _ suite _ <<<"$row"
        echo "deb $MIRROR $suite main" >>"$APTDIR/sources.list"
        case "$suite" in
            *-backports) ;;
            *) echo "deb $SECURITY $suite-security main" >>"$APTDIR/sources.list" ;;
        esac
    done
    apt-get "${APT_OPTS[@]}" update -q >"$APTDIR/update.log" 2>&1 \
        || { cat "$APTDIR/update.log"; exit 1; }
    touch "$APTDIR/updated"
}

fetchKernel() {
    local label=$1 suite=$2 prefix=$3 dir="$CACHE/kernel-$1"
    [ -f "$dir/vmlinuz" ] && [ -f "$dir/modules.cpio" ] \
        && cpio -t --quiet <"$dir/modules.cpio" | grep -q '^kernel-modules/dummy.ko$' && return
    aptUpdate
    # The newest linux-image-amd64 of that suite (or its security
    # updates) with the expected version, and the image it depends on.
    local version image deb tmp
    version=$(apt-cache "${APT_OPTS[@]}" madison linux-image-amd64 \
        | awk -F'|' -v s="$suite" -v p="$prefix" '
            { gsub(/ /, "", $2); split($3, u, " ") }
            index($2, p) == 1 && (u[2] == s "/main" || u[2] == s "-security/main") {
                print $2; exit }')
    if [ -z "$version" ]; then
        echo "no linux-image-amd64 $prefix* in $suite: update KERNEL_TABLE" >&2
        exit 1
    fi
    image=$(apt-cache "${APT_OPTS[@]}" show "linux-image-amd64=$version" \
        | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\).*/\1/p' | head -1)
    say "kernel $label: $image $version"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$image=$version" >/dev/null 2>&1) \
        || { echo "could not download $image=$version" >&2; exit 1; }
    # Newer packages keep the image in a linux-binary-* package.
    deb=$(ls "$tmp"/*.deb)
    if ! dpkg-deb -c "$deb" | grep vmlinuz >/dev/null; then
        local binary
        binary=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' \
            | sed -n 's/^ *\(linux-binary-[^ ]*\).*/\1/p')
        (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$binary=$version" \
            >/dev/null 2>&1) || { echo "could not download $binary" >&2; exit 1; }
    fi
    mkdir -p "$tmp/x"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
    # The dummy network driver, so that the guest has an interface with a
    # link-local IPv6 address (Twisted's IPv6 scope tests need one).  Newer
    # packages keep modules in a linux-modules-* package.
    if [ -z "$(find "$tmp/x" -name 'dummy.ko*')" ]; then
        local modules
        modules=$(dpkg-deb -f "$tmp"/linux-image-*.deb Depends | tr ',' '\n' \
            | sed -n 's/^ *\(linux-modules-[0-9][^ ]*\).*/\1/p')
        (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$modules=$version" \
            >/dev/null 2>&1) || { echo "could not download $modules" >&2; exit 1; }
        dpkg-deb -x "$tmp"/linux-modules-*.deb "$tmp/x"
    fi
    mkdir -p "$dir" "$tmp/m/kernel-modules"
    find "$tmp/x" -name 'vmlinuz*' -type f -exec cp {} "$dir/vmlinuz" \;
    local ko
    ko=$(find "$tmp/x" -name 'dummy.ko*' | head -1)
    case "$ko" in
        *.xz) xz -dc "$ko" ;;
        *.zst) zstd -dc "$ko" ;;
        *) cat "$ko" ;;
    esac >"$tmp/m/kernel-modules/dummy.ko"
    # Only new paths: an entry for an existing one (/lib is a symlink to
    # usr/lib) would replace it when the kernel unpacks this after the root
    # file system.
    (cd "$tmp/m" && find kernel-modules | cpio -o -H newc --quiet) >"$dir/modules.cpio"
    echo "$image $version" >"$dir/package"
    rm -rf "$tmp"
}

# -- root file system -------------------------------------------------------

ROOTFS="$CACHE/rootfs"
PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,pkg-config,liburing-dev,curl,bind9-dnsutils,iproute2,procps,libseccomp2,libcap2-bin,ca-certificates,util-linux,kmod
# Rebuilt when the package list, the project's dependencies or this recipe
# change.
rootfsDigest=$(printf '%s\n' "$PACKAGES" "$MIRROR" "rootfs-recipe-1" \
    | cat - "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)

# The host's /proc and /dev are bound into the root file system only while
# something runs in it.  A run stopped meanwhile must not leave them there:
# the next rebuild removes the root file system, and through a bound /dev
# that would remove the host's device nodes.  So they are unbound on any
# exit, and whatever an earlier run left bound is unbound at the start.
unbindHost() {
    local m
    for m in dev proc; do
        if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then
            umount "$ROOTFS/$m" 2>/dev/null || umount -l "$ROOTFS/$m"
        fi
    done
}

inChroot() {
    trap unbindHost EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mount --bind /proc "$ROOTFS/proc"
    mount --bind /dev "$ROOTFS/dev"
    local rc=0
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        PIP_DISABLE_PIP_VERSION_CHECK=1 ${PIP_CERT:+PIP_CERT=/etc/ssl/host-ca.pem} \
        "$@" || rc=$?
    unbindHost
    trap - EXIT INT TERM
    return $rc
}

ensureRootfs() {
    if [ -f "$ROOTFS/.digest" ] && [ "$(cat "$ROOTFS/.digest")" = "$rootfsDigest" ]; then
        return
    fi
    say "building the guests' root file system (debootstrap bookworm)"
    rm -rf --one-file-system "$ROOTFS"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        cp "$PIP_CERT" "$ROOTFS/etc/ssl/host-ca.pem"
    fi
    # The project's dependencies, from a copy of its metadata only.
    mkdir -p "$ROOTFS/src"
    stageSource
    inChroot /bin/sh -c '
        set -e
        python3 -m venv /opt/venv
        /opt/venv/bin/pip install --upgrade pip "setuptools>=77" wheel cffi
        /opt/venv/bin/pip install -e "/src[test]" --config-settings editable_mode=compat
    ' >"$CACHE/venv.log" 2>&1 || { tail -20 "$CACHE/venv.log"; exit 1; }
    rm -rf "$ROOTFS/var/cache/apt/archives"/*.deb "$ROOTFS/var/lib/apt/lists"/*_Packages
    echo "$rootfsDigest" >"$ROOTFS/.digest"
}

# The working tree as it is (tracked and untracked files, not ignored ones),
# so that uncommitted changes are what the guests test.
stageSource() {
    local dest="$ROOTFS/src" keep
    keep=$(mktemp -d)
    # Keep the built extensions; they are rebuilt below when their inputs
    # change.
    find "$dest" -maxdepth 2 -name '*.so' -exec cp {} "$keep/" \; 2>/dev/null || true
    rm -rf "$dest"
    mkdir -p "$dest"
    # (--ignore-failed-read: a tracked file deleted in the working tree.)
    (cd "$ROOT" && git ls-files -z -co --exclude-standard \
        | tar --null -T - -c --ignore-failed-read 2>/dev/null) | tar -x -C "$dest"
    mkdir -p "$dest/uringreactor"
    cp "$keep"/*.so "$dest/uringreactor/" 2>/dev/null || true
    rm -rf "$keep"
}

buildProject() {
    local digest
    digest=$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/build_ffi.py" \
        "$ROOT"/uringreactor/*.c "$ROOT"/uringreactor/c/* 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$ROOTFS/.build-digest" 2>/dev/null)" != "$digest" ] \
            || ! ls "$ROOTFS"/src/uringreactor/_liburing*.so >/dev/null 2>&1; then
        say "building the project in the root file system"
        inChroot /bin/sh -c '
            set -e
            cd /src
            /opt/venv/bin/pip install -q --no-deps --no-build-isolation -e . \
                --config-settings editable_mode=compat
        ' >"$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log"; exit 1; }
        echo "$digest" >"$ROOTFS/.build-digest"
    fi
    # Compiled once here rather than at every guest's first import.
    inChroot /opt/venv/bin/python -m compileall -q /src >/dev/null 2>&1 || true
    install -m 755 "$HERE/guest.sh" "$ROOTFS/init"
    # What the guest is to run.
    {
        printf 'MODE=%q\n' "$MODE"
        printf 'PYTEST_ARGS=%q\n' "$PYTEST_ARGS"
        printf 'TEST_SCALE=%q\n' "${GUEST_TEST_SCALE:-}"
    } >"$ROOTFS/etc/kernel-matrix.env"
}

# The initramfs is the whole root file system: the guest needs no disk and
# so no modules.  Uncompressed, because decompressing under emulation costs
# more than reading.
makeInitrd() {
    say "packing the root file system"
    (cd "$ROOTFS" && find . -path ./usr/share/doc -prune -o -path ./usr/share/man -prune \
        -o -path ./usr/share/locale -prune -o -path ./var/cache/apt -prune \
        -o -path ./var/lib/apt/lists -prune -o -path './src/build' -prune \
        -o -path './src/.git' -prune -o -print \
        | cpio -o -H newc --quiet) >"$CACHE/initrd.cpio"
}

# -- accelerator --------------------------------------------------------------

# KVM when a guest really boots with it; on some hosts (nested
# virtualisation) /dev/kvm exists but the guest hangs or QEMU aborts.
probeAccel() {
    if [ -n "${ACCEL:-}" ]; then echo "$ACCEL"; return; fi
    local key stamp="$CACHE/accel"
    key="$(uname -r) $(qemu-system-x86_64 --version | head -1)"
    if [ -f "$stamp" ] && [ "$(sed -n 2p "$stamp")" = "$key" ]; then
        head -1 "$stamp"; return
    fi
    local accel=tcg tmp kernel
    kernel="$CACHE/kernel-${WANTED[0]}/vmlinuz"
    if [ -w /dev/kvm ]; then
        tmp=$(mktemp -d)
        mkdir -p "$tmp/root/bin" "$tmp/root/proc"
        cp /bin/busybox "$tmp/root/bin/"
        printf '#!/bin/busybox sh\n/bin/busybox echo KVM-BOOTED\n/bin/busybox mount -t proc p /proc\necho o >/proc/sysrq-trigger\n' \
            >"$tmp/root/init"
        chmod +x "$tmp/root/init"
        (cd "$tmp/root" && find . | cpio -o -H newc --quiet) >"$tmp/probe.cpio"
        if timeout 30 qemu-system-x86_64 -accel kvm -cpu host -smp 2 -m 256 \
                -nographic -no-reboot -kernel "$kernel" -initrd "$tmp/probe.cpio" \
                -append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1 \
                | grep -aq KVM-BOOTED; then
            accel=kvm
        fi
        rm -rf "$tmp"
    fi
    printf '%s\n%s\n' "$accel" "$key" >"$stamp"
    echo "$accel"
}

# -- one guest ---------------------------------------------------------------

runGuest() {
    local label=$1 accel=$2 out="$CACHE/results/$label"
    rm -rf "$out"
    mkdir -p "$out"
    local cpu=(-cpu max)
    [ "$accel" = kvm ] && cpu=(-cpu host)
    # The kernel unpacks concatenated archives one after the other.
    cat "$CACHE/initrd.cpio" "$CACHE/kernel-$label/modules.cpio" >"$CACHE/initrd-$label.cpio"
    local t0 rc=0
    t0=$(date +%s)
    timeout "$TIMEOUT" qemu-system-x86_64 -accel "$accel" "${cpu[@]}" -smp 2 -m "$MEMORY" \
        -nographic -no-reboot -monitor none \
        -kernel "$CACHE/kernel-$label/vmlinuz" -initrd "$CACHE/initrd-$label.cpio" \
        -serial "file:$out/console.log" -serial "file:$out/results.txt" \
        -append "console=ttyS0 panic=-1 loglevel=5 uringreactor.accel=$accel" \
        </dev/null >"$out/qemu.log" 2>&1 || rc=$?
    echo $(( $(date +%s) - t0 )) >"$out/seconds"
    rm -f "$CACHE/initrd-$label.cpio"
    if [ $rc = 124 ]; then
        echo "TIMEOUT guest still running after ${TIMEOUT}s" >>"$out/results.txt"
    fi
    # The guest sends its logs as a base64 tar after its results.
    if grep -q '^BEGIN-LOGS' "$out/results.txt"; then
        sed -n '/^BEGIN-LOGS/,/^END-LOGS/p' "$out/results.txt" | sed '1d;$d' \
            | base64 -d 2>/dev/null | tar -xz -C "$out" 2>/dev/null || true
    fi
}

summarise() {
    local label=$1 out="$CACHE/results/$label" status=ok
    local results="$out/results.txt"
    if ! grep -q '^DONE' "$results" 2>/dev/null || grep -qE '^(FAIL|TIMEOUT)' "$results"; then
        status=FAIL
    fi
    local release seconds
    release=$(sed -n 's/^KERNEL //p' "$results" 2>/dev/null | head -1)
    seconds=$(cat "$out/seconds")
    echo "-- $label: ${release:-did not boot} ($(cat "$CACHE/kernel-$label/package" | cut -d' ' -f2), ${seconds}s)"
    grep -E '^(OK|FAIL|TIMEOUT|INFO) ' "$results" 2>/dev/null | sed 's/^/   /'
    if [ $status = FAIL ]; then
        echo "   logs: $out"
        if ! grep -q '^KERNEL' "$results" 2>/dev/null; then
            tail -20 "$out/console.log" 2>/dev/null | sed 's/^/   | /'
        fi
    fi
    STATUS[$label]=$status
}

# -- main ---------------------------------------------------------------------

for row in "${KERNEL_TABLE[@]}"; do
    read -r label suite prefix <<<"$row"
    case " ${WANTED[*]} " in *" $label "*) fetchKernel "$label" "$suite" "$prefix" ;; esac
done
# Before anything touches the cache: a rebuild removes the root file
# system, and a bind left over would be mounted over again.
unbindHost
ensureRootfs
stageSource
buildProject
makeInitrd
ACCEL_USED=$(probeAccel)
say "ready in $(( $(date +%s) - started ))s; booting ${WANTED[*]} ($MODE, $ACCEL_USED)"

declare -A STATUS
for label in "${WANTED[@]}"; do
    runGuest "$label" "$ACCEL_USED"
    summarise "$label"
done

line="kernels:"
failed=0
for label in "${WANTED[@]}"; do
    line+=" $label=${STATUS[$label]}"
    [ "${STATUS[$label]}" = ok ] || failed=1
done
echo "$line"
exit $failed
