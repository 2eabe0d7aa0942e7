"""
C{python -m uringreactor}: what a user needs to know before deploying on
this machine.

It prints the kernel, liburing, Python and Twisted versions; whether that
Twisted still has the private names the reactor relies on; each optional
io_uring feature with whether it is used and, if not, why (the kernel lacks
it, the environment disables it, it needs another); the limits that matter;
and whether the reactor can run here, with the cause and the fix when
io_uring is refused.  It exits 0 when the reactor can run, 1 otherwise.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

# The capability that exempts a process's rings from RLIMIT_MEMLOCK.
_CAP_IPC_LOCK = 14


def _limit(which: int) -> str:
    soft, hard = resource.getrlimit(which)

    def words(value: int) -> str:
        return "unlimited" if value == resource.RLIM_INFINITY else str(value)

    return f"{words(soft)} soft, {words(hard)} hard"


def _hasIpcLock() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
    except OSError:
        pass
    return False


def _sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def _versions() -> list[str]:
    import platform

    import twisted
    from uringreactor import __version__
    from uringreactor.probe import kernelRelease, liburingLinkage, liburingVersion

    return [
        f"uringreactor {__version__}",
        f"kernel:    Linux {kernelRelease()}",
        f"liburing:  {liburingVersion()} (built against, linked"
        f" {'statically' if liburingLinkage() == 'static' else 'as a shared library'})",
        f"python:    {platform.python_implementation()} {platform.python_version()}",
        f"twisted:   {twisted.__version__}",
    ]


def _limits() -> list[str]:
    memlock = _limit(resource.RLIMIT_MEMLOCK)
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY:
        memlock = f"{soft // 1024} KiB soft, " + (
            "unlimited hard"
            if hard == resource.RLIM_INFINITY
            else f"{hard // 1024} KiB hard"
        )
    if _hasIpcLock():
        memlock += "; CAP_IPC_LOCK: rings are not charged to it"
    else:
        memlock += (
            "; no CAP_IPC_LOCK: each ring is charged to it (about 200 KiB for "
            "the default size; a smaller ring is used when it does not fit)"
        )
    disabled = _sysctl("kernel.io_uring_disabled")
    if disabled is None:
        disabled = "absent (kernels before 6.6 have no such switch)"
    else:
        meaning = {
            "0": "io_uring allowed",
            "1": "only root and kernel.io_uring_group may use io_uring",
            "2": "io_uring refused to every process",
        }.get(disabled, "unknown value")
        disabled = f"{disabled} ({meaning})"
    return [
        "limits:",
        f"  RLIMIT_MEMLOCK            {memlock}",
        f"  RLIMIT_NOFILE             {_limit(resource.RLIMIT_NOFILE)}"
        " (one per connection)",
        f"  kernel.io_uring_disabled  {disabled}",
    ]


def report(write: Callable[[str], object] = print) -> int:
    """
    Write the report line by line; return the exit status (0: the reactor
    can run here).
    """
    from uringreactor.errors import IOUringUnavailable
    from uringreactor.twistednames import PRIVATE_NAMES, missing

    for line in _versions():
        write(line)
    gone = missing()
    if gone:
        write(
            "twisted private names: this Twisted lacks names the reactor"
            " relies on; use a Twisted release that uringreactor supports"
        )
        for line in gone:
            write(f"  {line}")
    else:
        write(f"twisted private names: all {len(PRIVATE_NAMES)} present")
    try:
        from uringreactor.reactor import IOUringReactor

        reactor = IOUringReactor()
    except IOUringUnavailable as e:
        for line in _limits():
            write(line)
        write("reactor: unavailable")
        write(f"  {e.reason or e.strerror}")
        write(
            "  With URINGREACTOR_FALLBACK=epoll (or install(fallback='epoll')) "
            "programs run on the epoll reactor instead, with a warning."
        )
        return 1
    try:
        ring = reactor._ring
        features = ring.features
        write(
            f"ring:      {ring.entries} submission, {ring.completionEntries} "
            "completion entries"
        )
        write("features:")
        for name, state in features.describe():
            write(f"  {name:17s} {state}")
        for line in _limits():
            write(line)
        used = ", ".join(sorted(features.enabled)) or "none"
        write(f"features in use: {used}")
        write("reactor: ok (uringreactor.install() will use io_uring here)")
    finally:
        ring.close()
    return 0


def main() -> None:
    sys.exit(report())
