"""
Errors raised when io_uring cannot be used, with the cause and the fix.
"""

from __future__ import annotations

import errno
import os


class IOUringUnavailable(OSError):
    """
    io_uring could not be set up in this process.

    The message names the most likely cause and how to fix it.  C{errno}
    holds the error the kernel gave to C{io_uring_setup}; C{reason} is the
    message without the hint about the epoll fallback.
    """

    reason: str = ""


def _kernelRelease() -> str:
    return os.uname().release


def _kernelAtLeast(major: int, minor: int) -> bool:
    from uringreactor.features import kernelVersion

    return kernelVersion() >= (major, minor)


def _disabledSysctl() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip()
    except OSError:
        return None


def memlockLimit() -> str:
    """
    The soft locked-memory limit, in words.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{soft // 1024} KiB"


def explainSetupError(err: int) -> IOUringUnavailable:
    """
    Build the error to raise when C{io_uring_setup} failed with C{err}.

    @param err: a positive errno value.
    """
    release = _kernelRelease()
    name = errno.errorcode.get(err, str(err))
    fallbackHint = (
        " To run anyway on the epoll reactor, opt in explicitly with "
        "uringreactor.install(fallback='epoll') or the environment variable "
        "URINGREACTOR_FALLBACK=epoll."
    )
    if err == errno.EPERM:
        sysctl = _disabledSysctl()
        if sysctl in ("1", "2"):
            cause = (
                f"the sysctl kernel.io_uring_disabled is {sysctl}, which refuses "
                + (
                    "io_uring to every process"
                    if sysctl == "2"
                    else "io_uring to processes outside kernel.io_uring_group"
                )
            )
            fix = (
                "set kernel.io_uring_disabled=0 (sysctl -w "
                "kernel.io_uring_disabled=0), or with the value 1 add this "
                "process's group to kernel.io_uring_group"
            )
        else:
            cause = (
                "a seccomp filter refuses the io_uring system calls; Docker 25 "
                "and newer and containerd's RuntimeDefault profile do this by "
                "default"
            )
            fix = (
                "run the container with a seccomp profile that allows "
                "io_uring_setup, io_uring_enter and io_uring_register "
                "(docker run --security-opt seccomp=<profile.json>, or "
                "--security-opt seccomp=unconfined)"
            )
    elif err == errno.ENOSYS:
        if _kernelAtLeast(5, 1):
            cause = (
                f"the kernel ({release}) has io_uring, so a seccomp filter is "
                "answering ENOSYS for it (podman's default profile does)"
            )
            fix = (
                "run the container with a seccomp profile that allows "
                "io_uring_setup, io_uring_enter and io_uring_register "
                "(podman run --security-opt seccomp=unconfined, or a profile "
                "file)"
            )
        else:
            cause = f"the kernel ({release}) is too old to have io_uring"
            fix = "use Linux 5.10 or newer"
    elif err == errno.ENOMEM:
        cause = (
            "the kernel could not allocate the ring: ring memory counts "
            "against the locked-memory limit (RLIMIT_MEMLOCK, here "
            f"{memlockLimit()}) of a process without CAP_IPC_LOCK, as in "
            "most containers, and that limit is used up"
        )
        fix = (
            "raise the locked-memory limit (ulimit -l unlimited; for "
            "containers, docker/podman run --ulimit memlock=-1), or keep "
            "fewer rings (reactors) alive at once"
        )
    elif err == errno.EMFILE or err == errno.ENFILE:
        cause = "the process or the system has run out of file descriptors"
        fix = "close descriptors or raise RLIMIT_NOFILE"
    elif err == errno.EINVAL:
        cause = f"the kernel ({release}) rejected every ring configuration tried"
        fix = "use Linux 5.10 or newer"
    else:
        cause = f"io_uring_setup failed with {name}"
        fix = "check the kernel's io_uring support"
    message = (
        f"io_uring is unavailable: io_uring_setup failed with {name} "
        f"({os.strerror(err)}). Cause: {cause}. Fix: {fix}."
    )
    error = IOUringUnavailable(err, message + fallbackHint)
    error.reason = message
    return error
