#!/usr/bin/env bash
# Prepare this checkout on a Debian/Ubuntu machine: the system packages
# uringreactor builds against, a virtualenv, and the editable install with
# the test and benchmark tools.  Safe to run again: it only does what is
# missing.  Used by tests/run, bench/run, the Dockerfile and CI.
#
#   URINGREACTOR_VENV   where the virtualenv lives (default: .venv here)
#   PYTHON              the interpreter to build it from (default: python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${URINGREACTOR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ "$(uname -s)" != Linux ]; then
    echo "uringreactor needs Linux (io_uring)" >&2
    exit 1
fi

# The interpreter's headers and venv module: PyPy's are packaged apart.
case "$(basename "$(readlink -f "$(command -v "$PYTHON" || echo "$PYTHON")")")" in
    pypy*) interpreter=(pypy3-dev pypy3-venv) ;;
    *) interpreter=(python3-dev python3-venv) ;;
esac
packages=(liburing-dev gcc pkg-config "${interpreter[@]}" curl libseccomp2 libcap2-bin)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing system packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null; then
        SUDO=(sudo)
    else
        echo "need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    "${SUDO[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q "${missing[@]}"
fi

version=$(pkg-config --modversion liburing 2>/dev/null || echo 0)
if ! printf '2.3\n%s\n' "$version" | sort -V -C; then
    echo "liburing $version is too old: uringreactor needs 2.3 or newer" \
         "(Debian 12, Ubuntu 24.04)" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "uringreactor needs Python 3.10 or newer ($PYTHON is older)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall when the build inputs change (the stamp records their hash).
stamp="$VENV/.uringreactor-installed"
digest=$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/build_ffi.py" \
    "$ROOT"/uringreactor/*.c "$ROOT"/uringreactor/c/* | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ] \
        || ! "$VENV/bin/python" -c 'import uringreactor._liburing, uringreactor.bufferring' \
            2>/dev/null; then
    echo "== installing uringreactor (editable) into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77"
    # compat mode: a plain .pth path entry, so that the twisted/plugins
    # dropin is visible to twistd and trial from any directory.
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test,bench]" \
        --config-settings editable_mode=compat
    echo "$digest" > "$stamp"
fi
