#!/usr/bin/env bash
# The interpreter matrix: the Dockerfile built for each interpreter users
# run, on base images made locally with debootstrap, and in each image the
# diagnostic, Twisted's ReactorBuilder suites compared against epoll (every
# io_uring feature on, then all off) and the project's tests
# (tests/container/inside.sh).
#
#   tests/container/matrix.sh [IMAGE...]     (or tests/container/run.sh --matrix)
#
#   bookworm-py3.11   Debian 12: CPython 3.11, liburing 2.3
#   trixie-py3.13     Debian 13: CPython 3.13, liburing 2.9
#   trixie-pypy3      Debian 13: PyPy 3 (7.3.19), liburing 2.9
#
# One line per step and image, then a last line
#   images: bookworm-py3.11=ok trixie-py3.13=ok trixie-pypy3=ok
# and a non-zero exit if any image failed.  Logs: build/container/matrix/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOG=${LOG_DIR:-$ROOT/build/container}/matrix
mkdir -p "$LOG"
# shellcheck source=tests/container/common.sh
. "$ROOT/tests/container/common.sh"

CPYTHON="python3 python3-venv python3-dev"
PYPY="pypy3 pypy3-venv pypy3-dev"
declare -A SUITE=([bookworm-py3.11]=bookworm [trixie-py3.13]=trixie [trixie-pypy3]=trixie)
declare -A PYTHON=([bookworm-py3.11]=/usr/bin/python3 [trixie-py3.13]=/usr/bin/python3
                   [trixie-pypy3]=/usr/bin/pypy3)
declare -A PACKAGES=([bookworm-py3.11]=$CPYTHON [trixie-py3.13]=$CPYTHON [trixie-pypy3]=$PYPY)
ALL=(bookworm-py3.11 trixie-py3.13 trixie-pypy3)

images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL[@]}")
for name in "${images[@]}"; do
    if [ -z "${SUITE[$name]:-}" ]; then
        echo "unknown image $name (known: ${ALL[*]})" >&2
        exit 2
    fi
done

needTools
verdicts=()
status=0
for name in "${images[@]}"; do
    started=$SECONDS
    base=localhost/debian:${SUITE[$name]}
    image=uringreactor-matrix:$name
    echo "== $name"
    verdict=ok
    if ! ensureBase "$base" "$LOG"; then
        verdict=failed
    elif ! buildImage "$image" "$base" "$LOG/$name-build.log" \
            --build-arg "PYTHON=${PYTHON[$name]}" \
            --build-arg "PYTHON_PACKAGES=${PACKAGES[$name]}"; then
        echo "FAIL build (log: $LOG/$name-build.log)"
        verdict=failed
    else
        echo "OK build ($((SECONDS - started))s)"
        if ! "${PODMAN[@]}" run --rm "${LIMITS[@]}" --security-opt seccomp=unconfined \
                "$image" ./tests/container/inside.sh 2>&1 | tee "$LOG/$name.log"; then
            verdict=failed
        fi
    fi
    echo "   $name: $verdict in $((SECONDS - started))s"
    [ $verdict = ok ] || status=1
    verdicts+=("$name=$verdict")
done
echo "images: ${verdicts[*]}"
exit $status
