"""
The ring: one io_uring instance and the table of operations the kernel owns.

Model
=====

Every operation the kernel owns is an L{uringreactor.operations.Operation}
in the ring's table (L{Ring.ops}) until its last completion: see
L{uringreactor.operations} for the model of ownership and cancellation.

Submission is batched.  Preparing an operation only fills in an SQE; the
event loop hands all of them to the kernel in the same C{io_uring_enter} that
waits for completions (L{Ring.enter}).  A file descriptor named by a prepared
SQE must therefore stay open until that call has been made: see
L{Ring.closeAfterSubmit}.

Completions are copied out of the CQ in batches by one C call into an array of
C{(slot, res, flags)} records, then dispatched from Python.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import struct
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.logger import Logger

from uringreactor._liburing import ffi, lib
from uringreactor.bufferring import Buffers
from uringreactor.features import Features
from uringreactor.operations import F_MORE, Operation, Preparing, _Cancelled
from uringreactor.ringsetup import checkRing, setUp

_log = Logger()

# How many completions one C call copies out.
_REAP_BATCH = 512
_CQE = struct.Struct("=QiI")
assert _CQE.size == ffi.sizeof("struct ur_cqe")
# How a batch is read: CPython unpacks the array's bytes as one (a cdata
# field read costs about 3x a struct unpack there); PyPy's JIT reads the
# cdata fields at a tenth of the unpack's cost.
_UNPACK_CQES = platform.python_implementation() == "CPython"

# io_uring_enter results that only mean "nothing more this time": a timeout,
# a signal, completions to reap first (EBUSY), a transient shortage.
_ENTER_TRANSIENT = frozenset((-errno.ETIME, -errno.EINTR, -errno.EBUSY, -errno.EAGAIN))


def _checkEnter(rc: int) -> None:
    if rc < 0 and rc not in _ENTER_TRANSIENT:
        raise OSError(-rc, "io_uring_enter: " + os.strerror(-rc))


def _releaseRing(ringPtr: Any, bufferRings: list[Any]) -> None:
    """
    Release a ring that is being garbage-collected: cancel what the kernel
    still owns and wait for it, so no buffer is freed under the kernel's
    feet, then free the provided buffers and the ring itself.
    """
    outstanding = lib.ur_drain(ringPtr, 1000)
    if outstanding:
        _log.warn(
            "{count} io_uring operations did not complete within 1s of "
            "releasing the ring",
            count=outstanding,
        )
    for buffers in bufferRings:
        try:
            buffers.unregister()
        except OSError:
            # Closing the io_uring below lets go of them all the same.
            pass
    lib.ur_ring_exit(ringPtr)
    # Only now can nothing write into the buffers.
    for buffers in bufferRings:
        buffers.release()


class Ring(Preparing):
    """
    An io_uring instance, the operations in flight on it, and the counters
    that describe its use.

    @ivar ops: the operations the kernel owns, each
        L{uringreactor.operations.Operation} at its slot (see
        L{uringreactor.operations}).
    @ivar features: the optional features in use on this ring.
    """

    def __init__(
        self,
        entries: int = 1024,
        completionEntries: int | None = None,
        features: Features | None = None,
    ) -> None:
        if features is None:
            features = Features.detect()
        self.features = features
        self._ptr = ffi.new("struct ur_ring *")
        if completionEntries is None:
            # Room for a burst of completions from many connections; beyond
            # it the kernel keeps completions on its overflow list (never
            # dropped), only more slowly.  About 200 KiB with 1024 entries,
            # which counts against RLIMIT_MEMLOCK in most containers.
            completionEntries = entries * 8
        setUp(self._ptr, features, entries, completionEntries)
        if "spin_wait" in features:
            self._ptr.spin_max_ns = features.spinMicroseconds * 1000
            self._ptr.spin_ns = self._ptr.spin_max_ns
        self.ops = [None] * 1024
        self._cqes = ffi.new("struct ur_cqe[]", _REAP_BATCH)
        self._cqeView = memoryview(ffi.buffer(self._cqes))
        self._pendingCloses: list[socket.socket | int] = []
        self._cancelling = 0
        self._deferred = []
        self._started = False
        self._bufferRings: list[Buffers] = []
        self._finalizer = weakref.finalize(
            self, _releaseRing, self._ptr, self._bufferRings
        )
        checkRing(self._ptr)

    def _start(self) -> None:
        """
        Enable the ring for the calling thread, which from now on is the one
        that submits, and register its fd for that thread.
        """
        self._started = True
        rc = lib.ur_ring_enable(self._ptr)
        if rc < 0:
            raise OSError(-rc, "io_uring enable: " + os.strerror(-rc))
        if "ring_fd" in self.features:
            rc = lib.ur_register_ring_fd(self._ptr)
            if rc < 0:
                self.features.discard(
                    "ring_fd",
                    f"registering the ring's descriptor answered "
                    f"{errno.errorcode.get(-rc, str(-rc))}",
                )

    def closeAfterSubmit(
        self, skt: socket.socket | int, immediately: bool = False
    ) -> None:
        """
        Close a socket (or raw fd) once every SQE prepared so far has been
        handed to the kernel.

        An SQE names its file by number and the kernel resolves that number
        only when the SQE is submitted; closing earlier could let a new file
        take the number and the operation act on the wrong file.  Operations
        already submitted hold their own reference to the file.

        @param immediately: also submit what is prepared now and let the
            kernel finish the cancellations that were waiting to drop their
            reference to the socket, so that it is really closed before this
            returns: a listening port must free its address by the time
            C{stopListening}'s Deferred fires.
        """
        if immediately:
            self._pendingCloses.append(skt)
            # Submits, runs the kernel's pending completion work, closes.
            self.enter(0)
        elif lib.ur_sq_ready(self._ptr) == 0:
            self._close(skt)
        else:
            self._pendingCloses.append(skt)

    @staticmethod
    def _close(skt: socket.socket | int) -> None:
        try:
            if isinstance(skt, int):
                os.close(skt)
            else:
                skt.close()
        except OSError:
            pass

    def _closePending(self) -> None:
        """
        Close the sockets that waited for their SQEs to reach the kernel,
        if every prepared SQE has.  Without C{SUBMIT_ALL} (before 5.18)
        submission stops at the first SQE the kernel rejects, and
        C{io_uring_enter} answers C{EBUSY} having submitted nothing while
        completions overflowed: SQEs still queued may name these sockets,
        and once closed their numbers can go to new sockets, which the
        queued operations would then act on.  They wait for a later
        submission then.
        """
        pending = self._pendingCloses
        if pending and lib.ur_sq_ready(self._ptr) == 0:
            self._pendingCloses = []
            for skt in pending:
                self._close(skt)

    # -- the loop -------------------------------------------------------

    def submit(self) -> int:
        """
        Hand every prepared SQE to the kernel without waiting.
        """
        if not self._started:
            self._start()
        rc: int = lib.ur_submit(self._ptr)
        self._closePending()
        _checkEnter(rc)
        return rc

    def enter(self, timeout: float | None) -> None:
        """
        Submit everything prepared and wait for completions: at most
        C{timeout} seconds, without limit for L{None}, and only collect what
        is ready for 0.
        """
        if not self._started:
            self._start()
        if timeout is None:
            rc = lib.ur_enter(self._ptr, 1, -1)
        elif timeout <= 0:
            rc = lib.ur_enter(self._ptr, 0, 0)
        else:
            rc = lib.ur_enter(self._ptr, 1, int(timeout * 1e9))
        if self._pendingCloses:
            self._closePending()
        _checkEnter(rc)

    def _reaped(self) -> Iterator[Iterable[tuple[int, int, int]]]:
        """
        Copy completions out of the CQ a batch at a time (one C call each)
        and yield each batch as C{(slot, res, flags)} records, until
        the CQ is empty.  A batch must be consumed before the next one is
        asked for: they share one buffer.
        """
        reap = lib.ur_reap
        ptr = self._ptr
        cqes = self._cqes
        view = self._cqeView
        unpack = _CQE.iter_unpack
        while True:
            n = reap(ptr, cqes, _REAP_BATCH)
            if n:
                if _UNPACK_CQES:
                    yield unpack(view[: n * 16])
                else:
                    yield [(c.slot, c.res, c.flags) for c in cqes[0:n]]
            if n < _REAP_BATCH:
                return

    def dispatch(self) -> None:
        """
        Deliver every completion in the CQ to its handler, after those kept
        back by L{settle}.
        """
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            for op, res, flags in deferred:
                self._deliverTo(op, res, flags)
        for batch in self._reaped():
            self._deliver(batch)

    def _deliver(self, completions: Iterable[tuple[int, int, int]]) -> None:
        ops = self.ops
        more = F_MORE
        for slot, res, flags in completions:
            op = ops[slot]
            if op is None:
                continue
            if not flags & more:
                # Its last: the C side has freed the slot already.
                ops[slot] = None
            # _deliverTo, inlined: this runs once per completion.
            try:
                handler = op.handler
                if handler is None:
                    op.completed(res, flags)
                else:
                    handler(res, flags)
            except BaseException:
                _log.failure("Unhandled error in io_uring completion handler")

    def _deliverTo(self, op: Operation, res: int, flags: int) -> None:
        """
        Deliver one completion, reaped earlier, to C{op}'s handler now (a
        cancelled one's, if it was cancelled meanwhile).
        """
        try:
            handler = op.handler
            if handler is None:
                op.completed(res, flags)
            else:
                handler(res, flags)
        except BaseException:
            _log.failure("Unhandled error in io_uring completion handler")

    def settle(self, timeout: float) -> None:
        """
        Hand everything prepared to the kernel, close the sockets waiting for
        that, and wait (at most C{timeout} seconds) for the final completions
        of cancelled operations, so that a stopped reactor leaves nothing in
        flight but what is still in use.  Completions of live operations
        reaped meanwhile are kept, in order, for the next L{dispatch}: nothing
        reaches a protocol while the reactor is not running.  They are kept
        with their operations, out of the table: the C side has freed the
        slots of those that finished, for new operations to take.
        """
        if self.closed:
            return
        if not self._started:
            self._start()
        deadline = time.monotonic() + timeout
        ops = self.ops
        while True:
            rc = lib.ur_enter(self._ptr, 1 if self._cancelling else 0, 1000000)
            self._closePending()
            _checkEnter(rc)
            for batch in self._reaped():
                for slot, res, flags in batch:
                    op = ops[slot]
                    if op is None:
                        continue
                    if not flags & F_MORE:
                        ops[slot] = None
                    if op.handler.__class__ is _Cancelled:
                        op.handler(res, flags)
                    else:
                        self._deferred.append((op, res, flags))
            if not self._cancelling or time.monotonic() >= deadline:
                return

    def adoptBuffers(self, buffers: Buffers) -> None:
        """
        Release C{buffers}, a provided-buffer ring registered with this
        io_uring, with it: unregistered before it closes, freed after.
        """
        self._bufferRings.append(buffers)

    # -- introspection --------------------------------------------------

    @property
    def enters(self) -> int:
        """
        How many times the loop may have entered the kernel so far: one
        event-loop iteration each, roughly.
        """
        return int(self._ptr.enters)

    @property
    def inFlight(self) -> int:
        """
        The number of operations the kernel still owns.
        """
        return int(self._ptr.inflight)

    def counters(self) -> dict[str, int]:
        """
        Counters of the ring's use since it was created: C{enters} (calls that
        may enter the kernel), C{sqes} (operations prepared), C{cqes}
        (completions reaped), C{sq_full} (submissions forced by a full
        submission queue), C{in_flight}, C{spins} (waits that spun before
        blocking) and C{spin_hits} (spins that found work).
        """
        p = self._ptr
        return {
            "enters": int(p.enters),
            "sqes": int(p.sqes),
            "cqes": int(p.cqes),
            "sq_full": int(p.sq_full),
            "in_flight": int(p.inflight),
            "spins": int(p.spins),
            "spin_hits": int(p.spin_hits),
        }

    @property
    def entries(self) -> int:
        """
        The size of the submission queue the kernel gave the ring.
        """
        return int(self._ptr.sq_entries)

    @property
    def completionEntries(self) -> int:
        """
        The size of the completion queue.
        """
        return int(self._ptr.cq_entries)

    @property
    def fileno(self) -> int:
        return int(lib.ur_ring_fd(self._ptr))

    def close(self) -> None:
        """
        Release the ring now (cancelling whatever is still in flight) instead
        of when it is garbage-collected.
        """
        self._closePending()
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


__all__ = ["Ring"]
