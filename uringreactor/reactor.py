"""
The io_uring reactor.

L{IOUringReactor} is a L{PosixReactorBase}: timers, threads, signals, the
waker, name resolution, processes and UNIX datagram sockets come from
Twisted.  What changes is the event loop and the I/O underneath:

  - one C{io_uring_enter} per iteration submits every operation prepared
    since the last one and waits for completions, bounded by the next timer;
  - TCP and UNIX stream transports (L{uringreactor.tcp},
    L{uringreactor.unix}) and UDP ports (L{uringreactor.udp}) do their
    reads, writes and accepts as io_uring operations;
  - every other descriptor, anything given to C{addReader}/C{addWriter},
    gets readiness notifications from io_uring poll operations, with the
    same level-triggered meaning as epoll: a one-shot poll, re-armed after
    each C{doRead}/C{doWrite}, fires at once while the descriptor stays
    ready.

To use it::

    import uringreactor
    uringreactor.install()
    from twisted.internet import reactor

or C{twistd --reactor=iouring}, C{trial --reactor=iouring}.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet import error, posixbase
from twisted.internet.interfaces import IHalfCloseableDescriptor, IReactorFDSet
from twisted.logger import Logger
from twisted.python import failure, log
from zope.interface import implementer

from uringreactor import process, tcp, udp, unix
from uringreactor._liburing import lib
from uringreactor.bufferring import BufferRing
from uringreactor.driver import Driver
from uringreactor.features import Features
from uringreactor.handle import CompletionIO
from uringreactor.operations import Operation
from uringreactor.ring import Ring

_log = Logger()

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_NO_FILEDESC = error.ConnectionFdescWentAway("File descriptor lost")
# The failures _disconnectSelectable reports for these, made once, as
# PosixReactorBase makes them.
_LOST: dict[type[BaseException], failure.Failure] = {
    error.ConnectionDone: failure.Failure(error.ConnectionDone()),
    error.ConnectionLost: failure.Failure(error.ConnectionLost()),
}

# Provided buffer ring shared by all TCP connections of a reactor.
BUFFER_COUNT = 512
BUFFER_SIZE = 65536
# How many of them circulate at first (see BufferRing): enough for a few
# dozen large reads in flight; more join as receives find none free.
BUFFERS_AT_START = 32
BUFFER_GROUP = 0


@implementer(IReactorFDSet)
class IOUringReactor(posixbase.PosixReactorBase, posixbase._PollLikeMixin):
    """
    A reactor whose I/O goes through io_uring.

    @ivar _ring: the L{Ring}.
    @ivar _driver: the L{Driver}, all that completion-based transports and
        ports use of the reactor.  Its C{handles} are those alive; each
        says whether it is reading (or accepting) and whether it has output
        pending, for C{getReaders}/C{getWriters}.  Kept this way so that a
        request does not cost set operations.
    @ivar _reads: maps each readiness-based reader to its armed poll
        operation (L{None} while its C{doRead} runs).
    @ivar _writes: the same for writers.
    """

    _POLL_DISCONNECTED = select.POLLHUP | select.POLLERR
    _POLL_IN = select.POLLIN
    _POLL_OUT = select.POLLOUT

    def __init__(
        self,
        features: Features | None = None,
        *,
        ringEntries: int = 1024,
        completionEntries: int | None = None,
        bufferCount: int = BUFFER_COUNT,
        bufferSize: int = BUFFER_SIZE,
        buffersAtStart: int = BUFFERS_AT_START,
    ) -> None:
        """
        @param features: the optional io_uring features to use; by default
            those the kernel has, less those named in
            C{URINGREACTOR_DISABLE}.
        @param ringEntries: submission queue size (a power of two).  More
            operations than this in one iteration are submitted in several
            batches.
        @param completionEntries: completion queue size; by default 8 times
            C{ringEntries}.  Completions beyond it wait in the kernel.
        @param bufferCount: number of provided receive buffers shared by all
            connections (a power of two); when all are in use, receives wait
            for one to come back.
        @param bufferSize: size of each provided receive buffer.
        @param buffersAtStart: how many of the buffers circulate at first;
            more join when receives find none free (see L{BufferRing}).
        """
        if buffersAtStart < 1:
            # Checked before the ring exists, so that nothing is left to
            # release.
            raise ValueError(
                f"at least one buffer must circulate, not {buffersAtStart}"
            )
        _tuneAllocator()
        self._ring = Ring(ringEntries, completionEntries, features=features)
        self._bufferRing: BufferRing | None = None
        if "multishot_recv" in self._ring.features:
            try:
                self._bufferRing = BufferRing(
                    self._ring,
                    bufferCount,
                    bufferSize,
                    BUFFER_GROUP,
                    circulating=buffersAtStart,
                )
            except OSError as e:
                self._ring.features.discard(
                    "buf_ring", f"setting up the provided buffers failed: {e}"
                )
        self._reads: dict[Any, _Readiness | None] = {}
        self._writes: dict[Any, _Readiness | None] = {}
        self._driver = Driver(
            self._ring, self._bufferRing, self._disconnectSelectable, self.callLater
        )
        posixbase.PosixReactorBase.__init__(self)

    # -- IReactorFDSet ---------------------------------------------------

    def addReader(self, reader: Any) -> None:
        """
        Watch C{reader} for readability (see L{IReactorFDSet.addReader}).
        """
        if getattr(reader, "_uringHandle", False):
            reader.startReading()
            return
        if reader not in self._reads:
            self._reads[reader] = self._arm(reader, True)

    def addWriter(self, writer: Any) -> None:
        """
        Watch C{writer} for writability (see L{IReactorFDSet.addWriter}).
        """
        if getattr(writer, "_uringHandle", False):
            writer.startWriting()
            return
        if writer not in self._writes:
            self._writes[writer] = self._arm(writer, False)

    def removeReader(self, reader: Any) -> None:
        """
        Stop watching C{reader} for readability.
        """
        if getattr(reader, "_uringHandle", False):
            # Unlike the transport's own stopReading (pauseProducing, which
            # keeps a multishot receive armed), the socket is left alone.
            reader._removedAsReader()
            return
        op = self._reads.pop(reader, None)
        if op is not None:
            self._ring.cancel(op)

    def removeWriter(self, writer: Any) -> None:
        """
        Stop watching C{writer} for writability.
        """
        if getattr(writer, "_uringHandle", False):
            writer.stopWriting()
            return
        op = self._writes.pop(writer, None)
        if op is not None:
            self._ring.cancel(op)

    def removeAll(self) -> list[Any]:
        """
        Remove every reader and writer except the reactor's own, and return
        them.
        """
        handles = self._driver.handles
        return self._removeAll(
            list(self._reads) + [h for h in handles if h._reading],
            list(self._writes) + [h for h in handles if h._writing],
        )

    def _disconnectSelectable(
        self,
        selectable: Any,
        why: Any,
        isRead: Any,
        faildict: Any = _LOST,
    ) -> None:
        """
        Disconnect C{selectable} for C{why}, as
        L{PosixReactorBase._disconnectSelectable} does: half-close it (end
        of input, for a transport that supports that), or lose it.

        A stream transport of this reactor that is lost goes straight to
        C{connectionLost}, without the C{removeReader} and C{removeWriter}
        that precede it there.  Its C{connectionLost} stops reading and
        writing and cancels what is in flight itself; C{removeReader} would
        first cancel the receive in flight on its own, to keep what it still
        brings for a transport that drops it a moment later.
        """
        if not isinstance(selectable, CompletionIO) or (
            isRead
            and why.__class__ is error.ConnectionDone
            and IHalfCloseableDescriptor.providedBy(selectable)
        ):
            posixbase.PosixReactorBase._disconnectSelectable(
                self, selectable, why, isRead, faildict
            )
            return
        reason = faildict.get(why.__class__)
        selectable.connectionLost(
            reason if reason is not None else failure.Failure(why)
        )

    def getReaders(self) -> list[Any]:
        return list(self._reads) + [h for h in self._driver.handles if h._reading]

    def getWriters(self) -> list[Any]:
        return list(self._writes) + [h for h in self._driver.handles if h._writing]

    def _arm(self, selectable: Any, isRead: bool) -> _Readiness:
        """
        Queue a one-shot poll for C{selectable} in one direction.
        """
        fd = selectable.fileno()
        if fd < 0:
            raise _NoDescriptor(f"{selectable!r} has no file descriptor ({fd})")
        op = _Readiness(self, selectable, isRead)
        self._ring.pollWith(fd, _POLLIN if isRead else _POLLOUT, op)
        return op

    def _ready(self, op: _Readiness, res: int) -> None:
        """
        The poll C{op} completed: run C{doRead} or C{doWrite} as epoll
        would, then poll again while the descriptor is still registered.
        """
        selectable = op.selectable
        isRead = op.isRead
        table = self._reads if isRead else self._writes
        if table.get(selectable) is not op:
            return
        table[selectable] = None
        if res < 0:
            # The descriptor was closed or never valid.
            del table[selectable]
            self._descriptorLost(selectable, isRead)
            return
        self._driver.call(selectable, self._doReadOrWrite, selectable, selectable, res)
        if selectable in table and table[selectable] is None:
            try:
                table[selectable] = self._arm(selectable, isRead)
            except BaseException as e:
                # The descriptor went away during doRead/doWrite: report it
                # as epoll's _doReadOrWrite does for fileno() == -1.
                del table[selectable]
                if not isinstance(e, _NoDescriptor):
                    log.err(None, "Could not poll a descriptor again")
                self._descriptorLost(selectable, isRead)

    def _descriptorLost(self, selectable: Any, isRead: bool) -> None:
        """
        Disconnect a readiness-based selectable whose descriptor is gone.
        """
        self._driver.call(
            selectable, self._disconnectSelectable, selectable, _NO_FILEDESC, isRead
        )

    # -- the loop ---------------------------------------------------------

    def doIteration(self, timeout: float | None) -> None:
        """
        Flush output, submit all prepared operations, wait for completions
        (at most C{timeout} seconds) and dispatch them.
        """
        driver = self._driver
        driver.logContexts.refresh()
        # Many sends go to the kernel together, in the one io_uring_enter
        # below; a lone one goes directly.
        if driver.flushQueue and driver.flush():
            # A flush with nothing left to send finished a loseConnection or
            # resumed a producer: that code may have stopped the reactor,
            # scheduled calls or written more, all of which the timeout
            # given to this iteration predates.
            timeout = 0
        self._ring.enter(timeout)
        self._ring.dispatch()
        if driver.arrivals:
            driver.deliverArrivals()

    def mainLoop(self) -> None:
        try:
            super().mainLoop()
        finally:
            # Shutdown disconnected everything: let the cancellations and
            # closes that caused reach the kernel before run() returns.
            self._ring.settle(0.5)

    # -- IReactorProcess ---------------------------------------------------

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: Any,
        args: Any = (),
        env: Any = {},  # noqa: B006 (Twisted's signature)
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = 0,
        childFDs: Any = None,
    ) -> Any:
        """
        Spawn a child as Twisted does (L{IReactorProcess.spawnProcess}); its
        output pipes are read by io_uring (L{uringreactor.process}).  With a
        PTY, Twisted's own process does everything.
        """
        if usePTY:
            return super().spawnProcess(
                processProtocol, executable, args, env, path, uid, gid, usePTY, childFDs
            )
        return process.Process(
            self, executable, args, env, path, processProtocol, uid, gid, childFDs
        )

    # -- IReactorTCP -------------------------------------------------------

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> tcp.Port:
        p = tcp.Port(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> Any:
        c = tcp.Connector(host, port, factory, timeout, bindAddress, self)
        c.connect()
        return c

    # -- IReactorUDP, IReactorMulticast -------------------------------------

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> udp.Port:
        p = udp.Port(port, protocol, interface, maxPacketSize, self)
        p.startListening()
        return p

    def listenMulticast(
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> udp.MulticastPort:
        p = udp.MulticastPort(
            port, protocol, interface, maxPacketSize, self, listenMultiple
        )
        p.startListening()
        return p

    # -- IReactorUNIX ------------------------------------------------------

    def listenUNIX(
        self,
        address: Any,
        factory: Any,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> unix.Port:
        p = unix.Port(address, factory, backlog, mode, self, wantPID)
        p.startListening()
        return p

    def connectUNIX(
        self, address: Any, factory: Any, timeout: float = 30, checkPID: int = 0
    ) -> Any:
        c = unix.Connector(address, factory, timeout, self, checkPID)
        c.connect()
        return c

    # -- IReactorSocket ----------------------------------------------------

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: Any, factory: Any
    ) -> Any:
        if addressFamily in (socket.AF_INET, socket.AF_INET6):
            p = tcp.Port._fromListeningDescriptor(
                self, fileDescriptor, addressFamily, factory
            )
            p.startListening()
            return p
        if addressFamily == socket.AF_UNIX:
            p = unix.Port._fromListeningDescriptor(self, fileDescriptor, factory)
            p.startListening()
            return p
        return super().adoptStreamPort(fileDescriptor, addressFamily, factory)

    def adoptStreamConnection(
        self, fileDescriptor: int, addressFamily: Any, factory: Any
    ) -> Any:
        if addressFamily in (socket.AF_INET, socket.AF_INET6):
            return tcp.Server._fromConnectedSocket(
                fileDescriptor, addressFamily, factory, self
            )
        if addressFamily == socket.AF_UNIX:
            return unix.Server._fromConnectedSocket(fileDescriptor, factory, self)
        return super().adoptStreamConnection(fileDescriptor, addressFamily, factory)

    def adoptDatagramPort(
        self,
        fileDescriptor: int,
        addressFamily: Any,
        protocol: Any,
        maxPacketSize: int = 8192,
    ) -> Any:
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            raise error.UnsupportedAddressFamily(addressFamily)
        p = udp.Port._fromListeningDescriptor(
            self, fileDescriptor, addressFamily, protocol, maxPacketSize=maxPacketSize
        )
        p.startListening()
        return p

    # -- introspection -----------------------------------------------------

    def ioCounters(self) -> dict[str, int]:
        """
        Counters of this reactor's use of io_uring: C{enters} (calls that
        may enter the kernel), C{sqes} (operations submitted), C{cqes}
        (completions handled), C{sq_full}, C{in_flight}, C{spins},
        C{spin_hits}, and C{buffers} (provided receive buffers in
        circulation).
        """
        counters = self._ring.counters()
        if self._bufferRing is not None:
            counters["buffers"] = self._bufferRing.circulating
        return counters

    @property
    def features(self) -> frozenset[str]:
        """
        The optional io_uring features this reactor uses.
        """
        return frozenset(self._ring.features.enabled)


# See ur_raise_malloc_thresholds in build_ffi.py: with glibc, the heap then
# keeps up to twice this much free memory rather than returning it to the
# kernel at every swing of a few megabytes.
_ALLOCATOR_THRESHOLD = 4 * 1024 * 1024
_allocatorTuned = False


def _tuneAllocator() -> None:
    """
    Once per process, let glibc's allocator keep the memory that copying
    receives out of provided buffers churns through.
    """
    global _allocatorTuned
    if not _allocatorTuned:
        _allocatorTuned = True
        lib.ur_raise_malloc_thresholds(_ALLOCATOR_THRESHOLD)


class _Readiness(Operation):
    """
    A one-shot poll for a readiness-based selectable, which hands its
    completion to the reactor (L{IOUringReactor._ready}) itself.  A
    closure as its handler would refer back to the operation, and every
    poll would leave a reference cycle (the operation, the closure, the
    selectable and all it refers to) for the garbage collector.
    """

    __slots__ = ("reactor", "selectable", "isRead")

    def __init__(self, reactor: IOUringReactor, selectable: Any, isRead: bool) -> None:
        Operation.__init__(self, None, None)
        self.reactor = reactor
        self.selectable = selectable
        self.isRead = isRead

    def completed(self, res: int, flags: int) -> None:
        self.reactor._ready(self, res)


class _NoDescriptor(ValueError):
    """
    A selectable given to C{addReader}/C{addWriter} has no descriptor.
    """


def install(fallback: str | None = None) -> Any:
    """
    Install the io_uring reactor as C{twisted.internet.reactor}.

    See L{uringreactor.install}.
    """
    from uringreactor import _install

    return _install(fallback)


__all__ = ["IOUringReactor", "install"]
