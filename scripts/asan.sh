#!/usr/bin/env bash
# Run the lifetime, fault and cancellation-race tests against an
# AddressSanitizer build of the extensions: any use of freed memory or
# buffer overflow in the C layer (or a buffer freed while the kernel still
# writes into it through a path we control) aborts the run with a report.
#
#   scripts/asan.sh [pytest arguments]
#
# The extensions are rebuilt with -fsanitize=address in a copy of the tree
# (build/asan), leaving the normal build alone; Python itself is not
# instrumented, so libasan is preloaded and leak detection is off (CPython
# keeps memory until exit by design).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
VENV=${URINGREACTOR_VENV:-$ROOT/.venv}
WORK=$ROOT/build/asan
rm -rf "$WORK"
mkdir -p "$WORK"
(cd "$ROOT" && git ls-files -z | xargs -0 tar -cf - | tar -C "$WORK" -xf -)
cd "$WORK"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" \
LDFLAGS="-fsanitize=address" \
    "$VENV/bin/python" setup.py build_ext --inplace >build.log 2>&1
LIBASAN=$(cc -print-file-name=libasan.so)
export LD_PRELOAD=$LIBASAN
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
"$VENV/bin/python" -c '
import uringreactor._liburing as m, uringreactor._buffers as b, uringreactor._pieces as p
for ext in (m, b, p):
    print("extension:", ext.__file__)
    assert "build/asan" in ext.__file__, "the instrumented build is not the one imported"
'
for so in uringreactor/_liburing*.so uringreactor/_buffers*.so uringreactor/_pieces*.so; do
    ldd "$so" | grep -q asan || { echo "$so not instrumented"; exit 1; }
done
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_buffers.py tests/test_lifetime.py tests/test_faults.py tests/test_tcp_behaviour.py \
    tests/test_unix.py tests/test_udp.py tests/test_spin.py "$@"
