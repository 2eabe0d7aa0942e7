"""
What the running kernel's io_uring can do, found out by trying it.

Version numbers are a poor guide: distributions backport io_uring features
into older kernels (RHEL 9's 5.14 has many from 6.x) and leave others out.
So each optional feature is tried once per process, on small rings of the
probe's own (C{ur_probe_kernel} in C{uringreactor/c/probe.c}): setup flags
by creating a ring with them, operation flags by running the operation on a
socket pair and looking at its completion.
"""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass

from uringreactor._liburing import ffi, lib
from uringreactor.errors import explainSetupError

# The probes, what each one tried (for messages), and the first mainline
# kernel that passes it.
PROBES = {
    "submit_all": ("creating a ring with IORING_SETUP_SUBMIT_ALL", "5.18"),
    "coop_taskrun": (
        "creating a ring with IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG",
        "5.19",
    ),
    "defer_taskrun": (
        "creating a ring with IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN",
        "6.1",
    ),
    "defer_taskrun_flag": (
        "creating a ring with IORING_SETUP_DEFER_TASKRUN | TASKRUN_FLAG",
        "6.1",
    ),
    "ring_fd": ("registering the ring's own descriptor", "5.18"),
    "buf_ring": ("registering a provided-buffer ring", "5.19"),
    "multishot_accept": ("a multishot accept", "5.19"),
    "multishot_recv": ("a multishot recv", "6.0"),
    "multishot_recvmsg": ("a multishot recvmsg", "6.0"),
}


@dataclass(frozen=True)
class KernelSupport:
    """
    The result of probing the running kernel.

    @ivar results: for each probe in L{PROBES}, 0 if the kernel did what was
        asked, otherwise the negative errno it answered.
    @ivar ringFeatures: the C{IORING_FEAT_*} bits of a plain ring.
    """

    results: dict[str, int]
    ringFeatures: int

    def supports(self, probe: str) -> bool:
        return self.results[probe] == 0

    def why(self, probe: str) -> str:
        """
        Why a probe failed, in words: what was tried, what the kernel
        answered, and the first kernel known to pass it.
        """
        what, first = PROBES[probe]
        err = -self.results[probe]
        name = errno.errorcode.get(err, str(err))
        return f"{what} answered {name} (Linux {first} and newer have it)"


@functools.cache
def kernelSupport() -> KernelSupport:
    """
    Probe the running kernel, once per process.

    @raise uringreactor.errors.IOUringUnavailable: io_uring itself is
        refused (seccomp, C{kernel.io_uring_disabled}, an old kernel, the
        locked-memory limit).
    """
    out = ffi.new("struct ur_probe *")
    rc = lib.ur_probe_kernel(out)
    if rc < 0:
        raise explainSetupError(-rc)
    results = {name: int(getattr(out, name)) for name in PROBES}
    return KernelSupport(results, int(out.ring_features))


def liburingVersion() -> str:
    """
    The version of liburing the binding was built against.
    """
    return ffi.string(lib.ur_liburing_version()).decode()


def liburingLinkage() -> str:
    """
    C{"static"} if liburing is linked into the binding (nothing to install
    at run time), C{"shared"} if the binding loads C{liburing.so.2}.
    """
    return ffi.string(lib.ur_liburing_linkage()).decode()


def kernelRelease() -> str:
    return os.uname().release
