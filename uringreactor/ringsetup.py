"""
Creating a ring: its setup flags from the features in use, shrinking it to
fit the locked-memory limit, and the checks that it can serve a reactor.
"""

from __future__ import annotations

import errno
import gc
import time
from typing import Any

from twisted.logger import Logger

from uringreactor._liburing import lib
from uringreactor.errors import explainSetupError, memlockLimit
from uringreactor.features import Features

_log = Logger()

# The smallest submission queue a ring is reduced to when the locked-memory
# limit has no room for the size asked for.
_SMALLEST_RING = 32


def setupFlags(features: Features) -> int:
    """
    The setup flags for the features in use (all of them probed).
    """
    flags = lib.IORING_SETUP_SUBMIT_ALL if "submit_all" in features else 0
    if "defer_taskrun" in features:
        flags |= (
            lib.IORING_SETUP_SINGLE_ISSUER
            | lib.IORING_SETUP_DEFER_TASKRUN
            # The single issuer becomes the thread that enables the
            # ring: the one running the event loop, which need not be
            # the one that built the reactor.
            | lib.IORING_SETUP_R_DISABLED
        )
        if "spin_wait" in features:
            # Pending deferred work is then flagged in the SQ ring,
            # where a spinning loop can see it.
            flags |= lib.IORING_SETUP_TASKRUN_FLAG
    elif "coop_taskrun" in features:
        flags |= lib.IORING_SETUP_COOP_TASKRUN | lib.IORING_SETUP_TASKRUN_FLAG
    return flags


def setUp(ptr: Any, features: Features, entries: int, completionEntries: int) -> None:
    """
    Create the io_uring in C{ptr} (a C{struct ur_ring *}) with the setup
    flags of C{features}, smaller if the locked-memory limit requires; or
    raise L{uringreactor.errors.IOUringUnavailable} with the cause.
    """
    flags = setupFlags(features)
    rc = _init(ptr, entries, completionEntries, flags)
    if rc == -errno.EINVAL and flags:
        # The probe's rings took these flags, so this should not
        # happen; if it does, a plain ring still works.
        for name in ("defer_taskrun", "coop_taskrun", "submit_all"):
            features.discard(name, "the kernel refused the ring's setup flags (EINVAL)")
        rc = _init(ptr, entries, completionEntries, 0)
    if rc == -errno.ENOMEM:
        rc = _initSmaller(ptr, entries, completionEntries, setupFlags(features))
    if rc < 0:
        raise explainSetupError(-rc)


def _init(ptr: Any, entries: int, completionEntries: int, flags: int) -> int:
    rc: int = lib.ur_ring_init(ptr, entries, completionEntries, flags)
    if rc != -errno.ENOMEM:
        return rc
    # Rings of reactors that are garbage but not yet collected still
    # count against RLIMIT_MEMLOCK: collect them, then give the kernel,
    # which tears rings down asynchronously, up to half a second to give
    # their memory back.
    gc.collect()
    deadline = time.monotonic() + 0.5
    while True:
        rc = lib.ur_ring_init(ptr, entries, completionEntries, flags)
        if rc != -errno.ENOMEM or time.monotonic() > deadline:
            return rc
        time.sleep(0.01)


def _initSmaller(ptr: Any, entries: int, completionEntries: int, flags: int) -> int:
    """
    The locked-memory limit has no room for a ring of the size asked
    for: halve it until one fits, down to L{_SMALLEST_RING} entries.
    Processes without CAP_IPC_LOCK have their rings charged to
    RLIMIT_MEMLOCK, which is 64 KiB by default on kernels before 5.16
    (Debian 11's 5.10 among them): there a ring of 1024 entries (about
    200 KiB) never fits, one of 256 does.  A smaller ring only submits
    and reaps in smaller batches.
    """
    rc = -errno.ENOMEM
    while rc == -errno.ENOMEM and entries > _SMALLEST_RING:
        entries //= 2
        completionEntries = max(completionEntries // 2, 2 * entries)
        rc = lib.ur_ring_init(ptr, entries, completionEntries, flags)
    if rc == 0:
        _log.warn(
            "io_uring ring reduced to {entries} submission and "
            "{completions} completion entries to fit the locked-memory "
            "limit (RLIMIT_MEMLOCK, {limit}); raise it (ulimit -l, "
            "LimitMEMLOCK= in a systemd unit, --ulimit memlock= for a "
            "container) for larger batches",
            entries=int(ptr.sq_entries),
            completions=int(ptr.cq_entries),
            limit=memlockLimit(),
        )
    return rc


def checkRing(ptr: Any) -> None:
    """
    Check the new ring's own feature bits: what the reactor cannot do
    without.
    """
    if not ptr.features & lib.IORING_FEAT_NODROP:
        # Before 5.5 the kernel may drop completions when the CQ is
        # full, which would lose data.
        raise explainSetupError(errno.ENOSYS)
    supported = lib.ur_probe_opcode(ptr, lib.IORING_OP_ASYNC_CANCEL)
    if supported <= 0:
        raise explainSetupError(errno.ENOSYS)
