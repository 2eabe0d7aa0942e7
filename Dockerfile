# uringreactor test image: builds the project with the same set-up script as
# README.md and runs the whole test suite by default.
#
#   docker build -t uringreactor .
#   docker run --rm --security-opt seccomp=unconfined uringreactor
#
# io_uring needs a seccomp profile that allows io_uring_setup, io_uring_enter
# and io_uring_register: Docker 25+ refuses them by default (EPERM), podman's
# default profile answers ENOSYS.  See README.md, "Docker and CI".
ARG BASE=debian:bookworm
FROM ${BASE}

# Optional: a CA bundle for pip, for networks that intercept TLS (mount it
# into the build and pass its path).  Empty means the image's own CAs.
ARG PIP_CERT=""

# The interpreter the project is built for, and its packages (for PyPy:
# --build-arg PYTHON=/usr/bin/pypy3 --build-arg
# "PYTHON_PACKAGES=pypy3 pypy3-venv pypy3-dev").
ARG PYTHON=/usr/bin/python3
ARG PYTHON_PACKAGES="python3 python3-venv python3-dev"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHON=${PYTHON} \
    URINGREACTOR_VENV=/opt/uringreactor-venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
        ca-certificates ${PYTHON_PACKAGES} gcc libc6-dev \
        pkg-config liburing-dev curl libseccomp2 libcap2-bin procps git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src
RUN rm -rf /src/.venv /src/build \
    && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && ./scripts/setup.sh

CMD ["./tests/run"]
