# Shared by the container scripts (sourced): podman's flags for this kind of
# VM, the tools to install when missing, and base images made locally with
# debootstrap when no registry serves them.

# Flags this kind of VM needs (no systemd cgroups, small default limits).
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

# Install podman, runc and debootstrap if missing.
needTools() {
    local need=()
    command -v podman >/dev/null || need+=(podman)
    command -v runc >/dev/null || need+=(runc)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing ${need[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
}

# ensureBase IMAGE LOGDIR: make sure IMAGE exists.  localhost/debian:SUITE
# is made from Debian's archive with debootstrap (minbase); any other name
# is pulled.
ensureBase() {
    local base=$1 log=$2 suite rootfs
    "${PODMAN[@]}" image exists "$base" && return 0
    case "$base" in
        localhost/debian:*)
            suite=${base#localhost/debian:}
            echo "== making base image $base with debootstrap"
            rootfs=$(mktemp -d)
            if ! debootstrap --variant=minbase "$suite" "$rootfs" \
                    http://deb.debian.org/debian >"$log/debootstrap-$suite.log" 2>&1; then
                tail -20 "$log/debootstrap-$suite.log"
                rm -rf "$rootfs"
                return 1
            fi
            tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$base" >/dev/null
            rm -rf "$rootfs"
            ;;
        *)
            "${PODMAN[@]}" pull "$base"
            ;;
    esac
}

# buildImage IMAGE BASE LOGFILE [--build-arg ...]: build the Dockerfile.
buildImage() {
    local image=$1 base=$2 logfile=$3
    shift 3
    local build=("${PODMAN[@]}" build "${LIMITS[@]}" --build-arg "BASE=$base" "$@" -t "$image")
    # Networks that intercept TLS: give pip the host's CA bundle.
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        build+=(-v "$PIP_CERT:/etc/ssl/host-ca.pem:ro" --build-arg PIP_CERT=/etc/ssl/host-ca.pem)
    fi
    "${build[@]}" "$ROOT" >"$logfile" 2>&1 || { tail -40 "$logfile"; return 1; }
}

# podman run's options for a container that uses pip: the host's CA bundle,
# on networks that intercept TLS.
pipRunArgs() {
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        echo "-v $PIP_CERT:/etc/ssl/host-ca.pem:ro -e PIP_CERT=/etc/ssl/host-ca.pem"
    fi
}
