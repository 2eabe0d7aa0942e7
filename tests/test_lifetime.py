"""
Lifetime safety: operations in flight when a transport closes are cancelled,
their completions never reach the protocol, descriptors and operations do
not leak, and a released reactor gives its ring back.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import socket
import time
import weakref
from typing import Any

import pytest
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from tests.conftest import openFds, refcounted, run, scaled, sleep
from uringreactor.operations import Operation
from uringreactor.reactor import IOUringReactor


class Strict(Protocol):
    """
    Fails loudly if anything reaches it after connectionLost.
    """

    def __init__(self) -> None:
        self.lost: Deferred[Any] = Deferred()
        self.made: Deferred[Any] = Deferred()
        self.received = 0
        self.violations: list[str] = []
        self.isLost = False

    def connectionMade(self) -> None:
        if self.isLost:
            self.violations.append("connectionMade after connectionLost")
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.isLost:
            self.violations.append("dataReceived after connectionLost")
        self.received += len(data)

    def connectionLost(self, reason: Any) -> None:
        if self.isLost:
            self.violations.append("connectionLost twice")
        self.isLost = True
        self.lost.callback(reason.value)


def _factory(protocols: list[Any], cls: type = Strict) -> Factory:
    f = Factory()

    def build(addr: Any) -> Protocol:
        p = cls()
        protocols.append(p)
        return p

    f.buildProtocol = build  # type: ignore[method-assign]
    return f


def _client(reactor: Any, port: int, proto: Protocol) -> None:
    f = ClientFactory()
    f.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, f)


def openSockets() -> set[int]:
    """
    The descriptors of this process that are sockets.
    """
    found = set()
    for fd in openFds():
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
        except OSError:
            pass
    return found


def _baseline(reactor: IOUringReactor) -> int:
    return reactor.ioCounters()["in_flight"]


def test_closeWithReceiveInFlight(uring: IOUringReactor) -> None:
    """
    Both loseConnection and abortConnection on a transport whose receive is
    waiting in the kernel end cleanly, cancel the receive and leave no
    operation or descriptor behind.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, _factory(servers), interface="127.0.0.1")
        yield sleep(uring, 0.01)
        fdsBefore = openSockets()
        baseline = _baseline(uring)
        for close in ("loseConnection", "abortConnection"):
            client = Strict()
            _client(uring, port.getHost().port, client)
            yield client.made
            while len(servers) < 1:
                yield sleep(uring, 0.001)
            server = servers.pop()
            yield sleep(uring, 0.01)
            # Both ends now have a receive in flight.
            assert _baseline(uring) >= baseline + 2
            getattr(server.transport, close)()
            yield server.lost
            yield client.lost
            assert not server.violations and not client.violations
        yield sleep(uring, 0.01)
        inFlight = _baseline(uring)
        fdsAfter = openSockets()
        yield port.stopListening()
        return baseline, inFlight, fdsBefore, fdsAfter

    baseline, inFlight, fdsBefore, fdsAfter = run(uring, work)
    assert inFlight == baseline
    assert fdsAfter == fdsBefore


def test_abortWithSendInFlight(uring: IOUringReactor) -> None:
    """
    Aborting a connection whose send is stuck in the kernel (the peer does
    not read) cancels the send; the buffers it uses stay alive until the
    kernel gives them back, and nothing leaks.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, _factory(servers), interface="127.0.0.1")
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        while not servers:
            yield sleep(uring, 0.001)
        server = servers[0]
        baseline = _baseline(uring)
        server.transport.write(os.urandom(1 << 20) * 32)
        yield sleep(uring, 0.1)
        sendsInFlight = server.transport._sender.op is not None
        server.transport.abortConnection()
        reason = yield server.lost
        yield sleep(uring, 0.05)
        after = _baseline(uring)
        peer.close()
        yield port.stopListening()
        return sendsInFlight, baseline, after, reason, server

    sendInFlight, baseline, after, reason, server = run(uring, work)
    assert sendInFlight
    # The server's receive and its stuck send are both gone.
    assert after <= baseline - 1
    assert not server.violations


def test_thousandsOfConnectCloseCyclesLeakNothing(uring: IOUringReactor) -> None:
    """
    3000 connect/exchange/close cycles, with either side closing, leave the
    number of descriptors and in-flight operations where they started.
    """
    cycles = scaled("connect/close cycles", 3000, minimum=300)

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []

        class Echo(Strict):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.write(data)

        port = uring.listenTCP(
            0, _factory(servers, Echo), interface="127.0.0.1", backlog=256
        )
        yield sleep(uring, 0.01)
        fds = openSockets()
        baseline = _baseline(uring)
        violations: list[str] = []
        batch = 50
        for start in range(0, cycles, batch):
            clients = []
            for _ in range(batch):
                c = Strict()
                _client(uring, port.getHost().port, c)
                clients.append(c)
            for i, c in enumerate(clients):
                yield c.made
                c.transport.write(b"ping %d" % i)
            for i, c in enumerate(clients):
                while c.received < len(b"ping %d" % i):
                    yield sleep(uring, 0.001)
                if (start + i) % 3 == 0:
                    c.transport.abortConnection()
                else:
                    c.transport.loseConnection()
            for c in clients:
                yield c.lost
                violations.extend(c.violations)
            while any(not s.isLost for s in servers):
                yield sleep(uring, 0.001)
            for s in servers:
                violations.extend(s.violations)
            servers.clear()
        yield sleep(uring, 0.02)
        result = (fds, openSockets(), baseline, _baseline(uring), violations)
        yield port.stopListening()
        return result

    fdsBefore, fdsAfter, opsBefore, opsAfter, violations = run(uring, work, timeout=240)
    assert violations == []
    assert fdsAfter == fdsBefore
    assert opsAfter == opsBefore


def test_stopLeavesNothingInFlight() -> None:
    """
    reactor.stop() disconnects every transport and port (as on epoll): once
    the loop has run its last pass, the only operation left in flight is the
    reactor's own waker, and every socket it opened is closed.
    """
    reactor = IOUringReactor()
    socketsBefore = openSockets()

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = reactor.listenTCP(0, _factory(servers), interface="127.0.0.1")
        clients = [Strict() for _ in range(20)]
        for c in clients:
            _client(reactor, port.getHost().port, c)
        for c in clients:
            yield c.made
            c.transport.write(b"x" * 100000)
        yield sleep(reactor, 0.05)
        return port, clients, servers

    port, clients, servers = run(reactor, work)
    assert all(c.isLost for c in clients + servers)
    assert not any(c.violations for c in clients + servers)
    assert not port.connected
    assert reactor.ioCounters()["in_flight"] == 1
    assert openSockets() == socketsBefore


def test_releasedReactorsGiveBackTheirRings() -> None:
    """
    Reactors that are dropped without being closed release their ring
    (Twisted's test suite builds one per test and never closes them).
    """

    def rings() -> int:
        count = 0
        for fd in openFds():
            try:
                if "io_uring" in os.readlink(f"/proc/self/fd/{fd}"):
                    count += 1
            except OSError:
                pass
        return count

    gc.collect()
    before = rings()
    for i in range(200):
        r = IOUringReactor()
        r.listenTCP(0, Factory(), interface="127.0.0.1")
        assert rings() >= 1
        del r
        if i % 20 == 19:
            gc.collect()
            assert rings() <= before
    gc.collect()
    assert rings() <= before


def test_droppedReactorCancelsItsOperationsAtOnce() -> None:
    """
    A reactor dropped with operations in flight (an accept, receives, a
    readiness poll) cancels each of them by its tag when it is collected, on
    every kernel (cancelling everything at once, IORING_ASYNC_CANCEL_ANY,
    needs 5.19): its release neither waits for its one-second limit nor
    warns.
    """
    from twisted.logger import globalLogPublisher

    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "did not complete" in event.get("log_format", ""):
            warnings.append(event["log_format"])

    reactor = IOUringReactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    peers = [
        socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(5)
    ]
    pipe = os.pipe()

    class Reader:
        def fileno(self) -> int:
            return pipe[0]

        def doRead(self) -> None:
            pass

        def logPrefix(self) -> str:
            return "Reader"

        def connectionLost(self, reason: object) -> None:
            pass

    reactor.addReader(Reader())
    # Iterations of the loop, not run(): stopping the reactor would
    # disconnect everything first.
    for _ in range(20):
        reactor.doIteration(0.01)
    inFlight = reactor.ioCounters()["in_flight"]
    assert inFlight >= 7, inFlight
    globalLogPublisher.addObserver(observe)
    try:
        del reactor, port
        started = time.monotonic()
        gc.collect()
        released = time.monotonic() - started
    finally:
        globalLogPublisher.removeObserver(observe)
        for p in peers:
            p.close()
        os.close(pipe[0])
        os.close(pipe[1])
    assert warnings == []
    assert released < 0.9, f"releasing the ring took {released:.2f}s"


def test_socketsStayOpenWhileSubmissionStopsEarly() -> None:
    """
    Before 5.18 (no SUBMIT_ALL) the kernel stops submitting at the first
    SQE it rejects (on 5.10, one naming a descriptor that is not open, with
    EBADF) and leaves the rest in the queue.  A socket closed through the
    ring must stay open until the SQEs behind such a one have been
    submitted too, or a new socket could take its number and the queued
    receive would read the new socket's data.
    """
    from uringreactor.operations import Operation
    from uringreactor.ring import Ring

    ring = Ring()
    first, firstPeer = socket.socketpair()
    polls: list[int] = []
    completions: list[tuple[int, int]] = []
    buf = bytearray(64)
    from uringreactor._liburing import ffi

    cbuf = ffi.from_buffer(buf)
    # A descriptor number no process has open.
    ring.poll(999_999, select.POLLIN, lambda res, flags: polls.append(res))
    ring.receive(
        first.fileno(),
        cbuf,
        64,
        Operation(lambda res, flags: completions.append((res, flags)), None),
    )
    ring.closeAfterSubmit(first)
    ring.enter(0)
    ring.dispatch()
    second, secondPeer = socket.socketpair()
    try:
        _receiveStaysOnItsSocket(ring, buf, completions, firstPeer, secondPeer)
        assert polls == [-errno.EBADF]
    finally:
        for s in (firstPeer, second, secondPeer):
            s.close()
        ring.close()


def _receiveStaysOnItsSocket(
    ring: Any,
    buf: bytearray,
    completions: list[tuple[int, int]],
    firstPeer: socket.socket,
    secondPeer: socket.socket,
) -> None:
    """
    The receive prepared on the first socket of a pair, closed through the
    ring, sees nothing the second pair sends, then what the first peer does.
    """
    secondPeer.send(b"meant for the second socket")
    ring.enter(0.2)
    ring.dispatch()
    assert completions == [], "the receive read another socket's data"
    firstPeer.send(b"for the first")
    ring.enter(1.0)
    ring.dispatch()
    assert completions and completions[0][0] == len(b"for the first")
    assert bytes(buf[: completions[0][0]]) == b"for the first"


def test_bytesReachTheKernelWithoutACopy() -> None:
    """
    The send path passes a bytes object to C as it is only where the
    pointer C sees is the object's own storage (CPython: the object is then
    kept alive until the send completes).  Where it is not (PyPy may pass
    a copy that lives only for the call), the operation holds a cdata of
    its own with the same contents, which stays put until it is dropped.
    """
    from uringreactor._liburing import ffi, lib
    from uringreactor.operations import _BYTES_STAY_PUT, Operation
    from uringreactor.ring import Ring

    data = os.urandom(4096)
    storage = int(ffi.cast("uintptr_t", ffi.from_buffer(data)))
    passedAsIs = lib.ur_address_of(data) == storage
    assert passedAsIs == _BYTES_STAY_PUT
    if not passedAsIs:
        ring = Ring()
        left, right = socket.socketpair()
        try:
            op = Operation(lambda res, flags: None, None)
            ring.send(left.fileno(), [data], len(data), op)
            pinned = [m for m in op.memory if isinstance(m, ffi.CData)]
            # (A copy made by ffi.new("char[]", data) ends with a NUL.)
            assert [ffi.buffer(m)[: len(data)] for m in pinned] == [data]
            # Pinned: the storage does not move while the operation holds it.
            address = int(ffi.cast("uintptr_t", pinned[0]))
            gc.collect()
            assert int(ffi.cast("uintptr_t", pinned[0])) == address
            ring.enter(1.0)
            ring.dispatch()
            assert right.recv(8192) == data
        finally:
            ring.close()
            left.close()
            right.close()


def test_restOfAPartialSendIsPinnedThroughItsBytes() -> None:
    """
    What is left of a partly sent piece (a memoryview of it) goes to the
    kernel pinned through the bytes object it views, not through the view:
    a pinned view has an export, and CPython's collector, clearing a cycle
    that holds the view and what pins it (an aborted connection kept by its
    protocol), could clear the view first and crash releasing the export.
    The kernel still sends the right bytes, single or vectored.
    """
    from uringreactor.operations import Operation
    from uringreactor.ring import Ring
    from uringreactor.sending import remainder

    whole = os.urandom(4096)
    other = os.urandom(512)
    ring = Ring()
    left, right = socket.socketpair()
    try:
        for pieces in ([whole], [whole, other]):
            rest = remainder(list(pieces), 1000)
            expected = b"".join(bytes(p) for p in rest)
            op = Operation(lambda res, flags: None, None)
            ring.send(left.fileno(), rest, len(expected), op)
            view = rest[0]
            assert type(view) is memoryview
            # No export: releasing the view would raise BufferError.
            view.release()
            kept = [m for m in op.memory[1:] if m]
            assert kept
            ring.enter(1.0)
            ring.dispatch()
            received = b""
            while len(received) < len(expected):
                received += right.recv(65536)
            assert received == expected
    finally:
        ring.close()
        left.close()
        right.close()


def test_socketClosedOnlyAfterItsOperationsAreSubmitted() -> None:
    """
    An SQE names its socket by descriptor number, resolved only when it is
    submitted.  A socket closed (through the ring) before its prepared
    receive was submitted must stay open until then, or a socket created
    meanwhile could take its number and the receive would read the new
    socket's data.
    """
    from uringreactor.operations import Operation
    from uringreactor.ring import Ring

    ring = Ring()
    first, firstPeer = socket.socketpair()
    completions: list[tuple[int, int]] = []
    buf = bytearray(64)
    from uringreactor._liburing import ffi

    cbuf = ffi.from_buffer(buf)
    ring.receive(
        first.fileno(),
        cbuf,
        64,
        Operation(lambda res, flags: completions.append((res, flags)), None),
    )
    number = first.fileno()
    ring.closeAfterSubmit(first)
    # The number must still be taken: a new socket gets another one.
    second, secondPeer = socket.socketpair()
    try:
        assert number not in (second.fileno(), secondPeer.fileno())
        # Once submitted the descriptor is closed; the receive keeps the
        # first socket alive and sees its peer's data.
        _receiveStaysOnItsSocket(ring, buf, completions, firstPeer, secondPeer)
        assert first.fileno() == -1
    finally:
        for s in (firstPeer, second, secondPeer):
            s.close()
        ring.close()


_MAPPED_BLOCKS = """
import ctypes, sys

class MallocInfo(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks "
        "uordblks fordblks keepcost".split()
    ]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallocInfo
if sys.argv[1] == "reactor":
    from uringreactor.reactor import IOUringReactor
    IOUringReactor()
before = libc.mallinfo2().hblks
block = bytes(2 * 1024 * 1024)
print(libc.mallinfo2().hblks - before)
"""


def test_heapKeepsMemoryThatReceivesChurn() -> None:
    """
    Creating a reactor moves glibc's thresholds up, so that the megabytes of
    receive-sized objects allocated and freed at every iteration stay in
    the heap instead of being mapped, returned and faulted in again: a 2 MiB
    object, mapped on its own in a fresh process, comes from the heap once
    a reactor exists.
    """
    import subprocess
    import sys

    def mappedBlocks(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED_BLOCKS, mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out)

    if mappedBlocks("plain") != 1:
        pytest.skip(
            "malloc here is not glibc's with its default thresholds (e.g. "
            "AddressSanitizer's, or MALLOC_* settings)"
        )
    assert mappedBlocks("reactor") == 0


class _Producer:
    """
    A streaming producer that only records being paused and resumed.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_connectionStateStaysCompact(uring: IOUringReactor) -> None:
    """
    However a server connection is used (concurrent sends through the ring,
    a producer, paused reading, half-close, abort, close), the attribute
    names its class sees stay within the 30 that CPython stores compactly
    per instance (SHARED_KEYS_MAX_SIZE); past them every connection that
    sets another name gets a full dictionary, some 830 bytes more, which
    made idle connections cost 1.5 times their epoll counterparts.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, _factory(servers), interface="127.0.0.1")
        peers = [
            socket.create_connection(("127.0.0.1", port.getHost().port))
            for _ in range(6)
        ]
        while len(servers) < len(peers):
            yield sleep(uring, 0.001)
        names: set[str] = set()
        transports = [p.transport for p in servers]
        for t in transports:
            # All at once, so they go through the ring, not a direct send.
            t.write(b"x" * 100)
        transports[1].registerProducer(_Producer(), True)
        transports[2].pauseProducing()
        transports[3].write(b"y" * (8 << 20))
        yield sleep(uring, 0.05)
        transports[2].resumeProducing()
        for t in transports:
            t.getHost()
            names.update(vars(t))
        transports[1].unregisterProducer()
        transports[0].loseWriteConnection()
        transports[3].abortConnection()
        transports[4].loseConnection()
        peers[5].close()
        yield sleep(uring, 0.1)
        for t in transports:
            names.update(vars(t))
        for p in peers:
            p.close()
        yield port.stopListening()
        return names

    names = run(uring, work)
    assert len(names) < 30, sorted(names)


def test_cancelBeforeSubmissionNeverReachesTheKernel() -> None:
    """
    An operation cancelled while its SQE still waits in the SQ is withdrawn:
    the kernel never runs it (data sent afterwards stays in the socket), its
    one and final completion is C{-ECANCELED} at once, and nothing stays in
    flight.  Operations prepared around it are unaffected.
    """
    from uringreactor._liburing import ffi
    from uringreactor.operations import Operation
    from uringreactor.ring import Ring

    ring = Ring()
    left, right = socket.socketpair()
    other, otherPeer = socket.socketpair()
    try:
        seen: list[tuple[str, int]] = []
        before = ring.inFlight
        withdrawn = Operation(lambda res, flags: seen.append(("withdrawn", res)), None)
        ring.receive(left.fileno(), ffi.new("char[]", 64), 64, withdrawn)
        kept = Operation(lambda res, flags: seen.append(("kept", res)), None)
        ring.receive(other.fileno(), ffi.new("char[]", 64), 64, kept)
        assert ring.cancel(
            withdrawn, late=lambda res, flags: seen.append(("late", res))
        )
        assert seen == [("late", -errno.ECANCELED)]
        assert not ring.owns(withdrawn)
        assert ring.inFlight == before + 1
        right.send(b"for another reader")
        otherPeer.send(b"x")
        ring.enter(1.0)
        ring.dispatch()
        assert seen == [("late", -errno.ECANCELED), ("kept", 1)]
        left.setblocking(False)
        assert left.recv(100) == b"for another reader"
        assert ring.inFlight == before
    finally:
        ring.close()
        for s in (left, right, other, otherPeer):
            s.close()


def test_idleConnectionsHoldNoSendSide(uring: IOUringReactor) -> None:
    """
    A connection that has sent everything lets its send side go, to the
    next connection that writes; senders handed from one connection to
    another never mix their output, and one with output still waiting keeps
    its sender.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, _factory(servers), interface="127.0.0.1")
        peers = [
            socket.create_connection(("127.0.0.1", port.getHost().port))
            for _ in range(8)
        ]
        while len(servers) < len(peers):
            yield sleep(uring, 0.001)
        transports = [p.transport for p in servers]
        senders: set[int] = set()
        expected = [b""] * len(peers)
        for round in range(20):
            # A different subset each round, all in one iteration (through
            # the ring) or alone (a direct send).
            writers = [i for i in range(len(peers)) if (i + round) % 3 != 0]
            if round % 4 == 3:
                writers = writers[:1]
            for i in writers:
                data = b"%d.%d;" % (i, round)
                transports[i].write(data)
                expected[i] += data
                senders.add(id(transports[i]._sender))
            yield sleep(uring, 0.01)
            idle = [t._sender is None for t in transports]
        # A large write, which the peer does not read yet, keeps its sender
        # while it waits.
        big = os.urandom(4 << 20)
        transports[0].write(big)
        expected[0] += big
        yield sleep(uring, 0.05)
        waiting = transports[0]._sender is not None
        received = [b""] * len(peers)
        for peer in peers:
            peer.setblocking(False)
        deadline = time.monotonic() + 30
        while received != expected and time.monotonic() < deadline:
            for i, peer in enumerate(peers):
                try:
                    received[i] += peer.recv(1 << 20)
                except BlockingIOError:
                    pass
            yield sleep(uring, 0.001)
        for p in peers:
            p.close()
        yield port.stopListening()
        return idle, waiting, senders, received, expected

    idle, waiting, senders, received, expected = run(uring, work)
    assert idle == [True] * 8
    assert waiting
    # Reused: never more senders than connections writing at once.
    assert len(senders) <= 8
    assert received == expected


def test_closedConnectionsGiveTheirIdleSenderBack(uring: IOUringReactor) -> None:
    """
    A connection that closes with everything sent gives its send side to
    the next connection that writes, and lets go of it; one that closes
    with a send still in flight does not, since that send's memory is the
    kernel's until it completes.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, _factory(servers), interface="127.0.0.1")
        pool = uring._driver.idleSenders

        @inlineCallbacks
        def connect() -> Any:
            client = Strict()
            _client(uring, port.getHost().port, client)
            yield client.made
            while not servers:
                yield sleep(uring, 0.001)
            return client, servers.pop()

        # The response of a connection that closes once it has gone.
        client, server = yield connect()
        server.transport.write(b"bye")
        sender = server.transport._sender
        pool.clear()
        server.transport.loseConnection()
        yield server.lost
        yield client.lost
        pooled = [s is sender for s in pool]
        kept = server.transport._sender
        # A send in flight when the connection is aborted: the client does
        # not read, so the kernel holds the send.
        client, server = yield connect()
        client.transport.pauseProducing()
        # Write until the socket buffers are full and a send waits in the
        # kernel (how much fits depends on the machine's buffer sizes).
        written = 0
        busy = None
        while written < 256 << 20:
            server.transport.write(b"x" * (4 << 20))
            written += 4 << 20
            yield sleep(uring, 0.02)
            busy = server.transport._sender
            if busy is not None and busy.op is not None:
                break
        inFlight = busy is not None and busy.op is not None
        pool.clear()
        server.transport.abortConnection()
        client.transport.resumeProducing()
        yield server.lost
        yield client.lost
        yield sleep(uring, 0.01)
        yield port.stopListening()
        return pooled, kept, inFlight, busy in pool, client.received, written

    pooled, kept, inFlight, busyPooled, received, written = run(uring, work)
    assert pooled == [True]
    assert kept is None
    assert inFlight
    assert not busyPooled
    assert received < written


def test_newOperationsNeverTakeTheSlotOfACompletionStillToDeliver() -> None:
    """
    Operations are known by their slot in the ring's table.  A handler that
    prepares new operations while a batch of completions is delivered gets
    slots that no completion of that batch names: each completion reaches
    the operation it belongs to, never a successor in its slot.
    """
    from uringreactor.ring import Ring

    ring = Ring()
    pipes = [os.pipe() for _ in range(8)]
    quiet, quietEnd = os.pipe()
    try:
        seen: list[str] = []
        born: list[Operation] = []

        def first(res: int, flags: int) -> None:
            seen.append("op0")
            # Prepared while the others' completions are still to come.
            for i in range(4):
                op = ring.poll(quiet, select.POLLIN, _recorder(seen, f"new{i}"))
                born.append(op)

        ops = [ring.poll(pipes[0][1], select.POLLOUT, first)]
        for i in range(1, len(pipes)):
            op = ring.poll(pipes[i][1], select.POLLOUT, _recorder(seen, f"op{i}"))
            ops.append(op)
        ring.enter(1.0)
        ring.dispatch()
        assert seen == [f"op{i}" for i in range(len(pipes))]
        assert {op.tag for op in born}.isdisjoint(op.tag for op in ops)
        os.write(quietEnd, b"x")
        ring.enter(1.0)
        ring.dispatch()
        assert sorted(seen[len(pipes) :]) == [f"new{i}" for i in range(4)]
        assert ring.inFlight == 0
    finally:
        ring.close()
        for fd in [quiet, quietEnd] + [fd for pipe in pipes for fd in pipe]:
            os.close(fd)


def _recorder(seen: list[Any], name: str) -> Any:
    """
    A handler that records C{name} in C{seen}.
    """
    return lambda res, flags: seen.append(name)


def test_completionReapedWhileStoppedStaysWithItsOperation() -> None:
    """
    A completion reaped while the reactor is stopped (L{Ring.settle}) waits
    for the next dispatch with its operation: an operation prepared
    meanwhile, which may take the finished one's slot, does not receive
    it; and cancelling the operation before that dispatch hands the
    completion to the cancel's C{late}, never to the owner.
    """
    from uringreactor._liburing import ffi
    from uringreactor.operations import Operation
    from uringreactor.ring import Ring

    ring = Ring()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        seen: list[tuple[str, int]] = []
        kept = Operation(_resultRecorder(seen, "kept"), None)
        ring.receive(pairs[0][0].fileno(), ffi.new("char[]", 64), 64, kept)
        dropped = Operation(_resultRecorder(seen, "dropped"), None)
        ring.receive(pairs[1][0].fileno(), ffi.new("char[]", 64), 64, dropped)
        ring.enter(0)
        pairs[0][1].send(b"abc")
        pairs[1][1].send(b"defg")
        deadline = time.monotonic() + 5
        while len(ring._deferred) < 2 and time.monotonic() < deadline:
            ring.settle(0.01)
        assert seen == []
        newcomer = Operation(_resultRecorder(seen, "newcomer"), None)
        ring.receive(pairs[2][0].fileno(), ffi.new("char[]", 64), 64, newcomer)
        assert ring.cancel(dropped, late=_resultRecorder(seen, "late"))
        assert seen == [("late", 4)]
        ring.enter(0)
        ring.dispatch()
        assert seen == [("late", 4), ("kept", 3)]
        pairs[2][1].send(b"hi")
        ring.enter(1.0)
        ring.dispatch()
        assert seen == [("late", 4), ("kept", 3), ("newcomer", 2)]
        assert ring.inFlight == 0
    finally:
        ring.close()
        for pair in pairs:
            for s in pair:
                s.close()


def _resultRecorder(seen: list[Any], name: str) -> Any:
    """
    A handler that records C{(name, res)} in C{seen}.
    """
    return lambda res, flags: seen.append((name, res))


class _Echo(Strict):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


@refcounted
@pytest.mark.parametrize(
    "ending", ["peerCloses", "serverCloses", "closesWhilePaused", "abortsWithOutput"]
)
def test_closedConnectionsAreFreedWithoutTheCollector(
    anyReactor: Any, ending: str
) -> None:
    """
    A connection that has closed, however it closed, is freed as soon as
    the application lets go of it, without the garbage collector: nothing
    of the reactor's (its receive and send sides, operations cancelled
    with their late handlers) keeps it in a reference cycle, as nothing of
    epoll's does.  A server with a connection per request would otherwise
    leave a cycle per request for the collector.
    """
    reactor = anyReactor
    servers: list[Any] = []
    gc.collect()
    gc.disable()
    try:

        @inlineCallbacks
        def work() -> Any:
            port = reactor.listenTCP(0, _factory(servers, _Echo), interface="127.0.0.1")
            client = Strict()
            _client(reactor, port.getHost().port, client)
            yield client.made
            while not servers:
                yield sleep(reactor, 0.001)
            server = servers[0]
            if ending == "peerCloses":
                client.transport.write(b"ping")
                while client.received < 4:
                    yield sleep(reactor, 0.001)
                client.transport.loseConnection()
            elif ending == "serverCloses":
                server.transport.write(b"pong")
                server.transport.loseConnection()
            elif ending == "closesWhilePaused":
                server.transport.pauseProducing()
                client.transport.write(b"held while paused")
                yield sleep(reactor, 0.05)
                server.transport.loseConnection()
            else:
                # The client does not read: the send stays in flight.
                client.transport.pauseProducing()
                server.transport.write(b"x" * (8 << 20))
                yield sleep(reactor, 0.05)
                server.transport.abortConnection()
                # Reading again, the client sees the reset.
                client.transport.resumeProducing()
            yield server.lost
            yield client.lost
            yield sleep(reactor, 0.05)
            yield port.stopListening()
            assert not server.violations
            # Strict's own Deferred refers back to it (made fired with it).
            server.made = None
            return weakref.ref(server.transport)

        ref = run(reactor, work)
        servers.clear()
        assert ref() is None
        # Nor did the operations of the connection (its receive and send
        # sides, cancelled ones) make cycles of their own.
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # This reactor's only: what an earlier test's reactor left in cycles
        # turns up here too if whatever held it lets go meanwhile.
        driver = getattr(reactor, "_driver", None)
        cycles = [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, Operation) and getattr(o, "driver", driver) is driver
        ]
        assert cycles == []
    finally:
        gc.enable()
        gc.set_debug(0)
        gc.garbage.clear()
