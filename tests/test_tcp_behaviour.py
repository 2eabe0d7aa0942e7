"""
TCP behaviour that Twisted's own suites do not pin down: ordering of many
small writes, large transfers, producers under backpressure, error mapping.
Where it matters the same test runs on epoll, to show the two agree.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import pytest
from twisted.internet import error, interfaces
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from tests.conftest import _release, requireFeature, run, sleep
from uringreactor import handle
from uringreactor.reactor import IOUringReactor


class Collect(Protocol):
    """
    Collects what it receives; fires C{done} with the bytes on connection
    loss.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()
        self.made: Deferred[Collect] = Deferred()
        self.reason: Any = None

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.done.callback(b"".join(self.chunks))


def serverFactory(protocols: list[Any], cls: type = Collect) -> Factory:
    factory = Factory()

    def build(addr: Any) -> Protocol:
        p = cls()
        p.factory = factory
        protocols.append(p)
        return p

    factory.buildProtocol = build  # type: ignore[method-assign]
    return factory


def clientFactory(proto: Protocol) -> ClientFactory:
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
    return factory


def connectPair(reactor: Any, host: str = "127.0.0.1", cls: type = Collect) -> Any:
    """
    Listen, connect a L{Collect} client, and fire with (port, client,
    server) once both ends are connected.
    """
    servers: list[Any] = []
    port = reactor.listenTCP(0, serverFactory(servers, cls), interface=host)
    client = Collect()
    reactor.connectTCP(host, port.getHost().port, clientFactory(client))

    @inlineCallbacks
    def both() -> Any:
        yield client.made
        while not servers:
            yield sleep(reactor, 0.001)
        return port, client, servers[0]

    return both()


def test_manySmallWritesArriveInOrder(anyReactor: Any) -> None:
    """
    Tens of thousands of write() and writeSequence() calls of varying sizes
    arrive complete and in order.
    """
    pieces = [(b"%d:" % i) + bytes([i % 251]) * (i % 97) for i in range(30000)]
    expected = b"".join(pieces)

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor)
        for i in range(0, len(pieces), 10):
            if i % 20:
                client.transport.writeSequence(pieces[i : i + 10])
            else:
                for piece in pieces[i : i + 10]:
                    client.transport.write(piece)
            if i % 1000 == 0:
                # Let some of it go out while more is written.
                yield sleep(anyReactor, 0)
        client.transport.loseConnection()
        received = yield server.done
        yield port.stopListening()
        return received

    received = run(anyReactor, work)
    assert len(received) == len(expected)
    assert received == expected


def test_writeSequenceRefusesWhatIsNotBytes(anyReactor: Any) -> None:
    """
    writeSequence raises TypeError for a piece that is not bytes, as
    FileDescriptor's does, and buffers nothing of that sequence; bytes
    subclasses are accepted.
    """

    class Bytes(bytes):
        pass

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor)
        for refused in ("text", bytearray(b"array"), memoryview(b"view"), 1):
            with pytest.raises(TypeError):
                client.transport.writeSequence([b"lost ", refused])
        client.transport.writeSequence([b"kept ", Bytes(b"subclass")])
        client.transport.writeSequence((b", ", b"a tuple"))
        client.transport.loseConnection()
        received = yield server.done
        yield port.stopListening()
        return received

    assert run(anyReactor, work) == b"kept subclass, a tuple"


@pytest.mark.parametrize(
    "byteLength, subclassCounted",
    [
        pytest.param(
            handle._byteLength,
            handle._byteLength is not handle._byteLengthInPython,
            id="built",
        ),
        pytest.param(handle._byteLengthInPython, False, id="python"),
    ],
)
def test_writeSequenceCountsBytesOnly(byteLength: Any, subclassCounted: bool) -> None:
    """
    The check writeSequence makes of its pieces (in C where built) gives
    their total length when all are bytes, and -1 otherwise, so that the
    transport then checks each piece and raises Twisted's TypeError.  The C
    check counts subclasses of bytes too; the Python one leaves them to the
    transport's piece-by-piece check (which accepts them).
    """

    class Bytes(bytes):
        pass

    assert byteLength([]) == 0
    assert byteLength([b"HTTP/1.1", b" ", b"200", b"\r\n"]) == 14
    assert byteLength((b"ab", b"", b"cde")) == 5
    for refused in ("text", bytearray(b"array"), memoryview(b"view"), None):
        assert byteLength([b"ok", refused]) == -1
        assert byteLength((refused,)) == -1
    assert byteLength([b"ab", Bytes(b"cd")]) == (4 if subclassCounted else -1)


class Blast(Protocol):
    """
    Sends C{total} bytes of a reproducible stream as a streaming producer,
    hashing what it sends.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.hash = hashlib.sha256()
        self.paused = 0
        self.resumed = 0
        self.block = os.urandom(1 << 20)

    def start(self, transport: Any) -> None:
        self.t = transport
        transport.registerProducer(self, True)
        self.resumeProducing()
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self.resumed += 1
        self._paused = False
        while not self._paused and self.sent < self.total:
            n = min(len(self.block), self.total - self.sent)
            # A fresh object each time: the transport keeps a reference,
            # not a copy.
            chunk = self.block[self.sent % 7919 :][:n]
            if len(chunk) < n:
                chunk = (self.block * 2)[self.sent % 7919 :][:n]
            self.hash.update(chunk)
            self.sent += len(chunk)
            self.t.write(chunk)
        if self.sent >= self.total:
            self.t.unregisterProducer()
            self.t.loseConnection()

    def stopProducing(self) -> None:
        self._paused = True


class HashingCollect(Collect):
    def __init__(self) -> None:
        super().__init__()
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.done.callback(b"")


@pytest.mark.parametrize("direction", ["client-to-server", "server-to-client"])
def test_hundredMegabytesByteExact(uring: Any, direction: str) -> None:
    """
    100 MB through one connection, in either direction, arrive byte-exact.
    """
    total = 100 * 1000 * 1000

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(uring, cls=HashingCollect)
        if direction == "client-to-server":
            sender, receiver = client, server
        else:
            sender, receiver = server, client
        receiver.hash = hashlib.sha256()
        receiver.count = 0

        def counted(data: bytes) -> None:
            receiver.hash.update(data)
            receiver.count += len(data)

        receiver.dataReceived = counted
        blast = Blast(total)
        blast.start(sender.transport)
        yield receiver.done
        yield port.stopListening()
        return blast, receiver

    blast, receiver = run(uring, work, timeout=120)
    assert receiver.count == total
    assert receiver.hash.hexdigest() == blast.hash.hexdigest()
    # Sending faster than loopback drains must have paused the producer.
    assert blast.paused >= 1


def test_streamingProducerPausedAndResumed(anyReactor: Any) -> None:
    """
    A streaming producer is paused once more than bufferSize bytes wait to
    be sent to a peer that is not reading, the buffered amount stays
    bounded, and everything arrives once the peer reads again.
    """
    total = 64 * 1000 * 1000

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor, cls=HashingCollect)
        client.hash = hashlib.sha256()
        client.count = 0

        def received(data: bytes) -> None:
            client.hash.update(data)
            client.count += len(data)

        client.dataReceived = received
        client.transport.pauseProducing()
        blast = Blast(total)
        blast.start(server.transport)
        yield sleep(anyReactor, 0.5)
        pausedWhileBlocked = blast.paused
        sentWhileBlocked = blast.sent
        receivedWhileBlocked = client.count
        client.transport.resumeProducing()
        yield client.done
        yield port.stopListening()
        return (
            blast,
            client,
            pausedWhileBlocked,
            sentWhileBlocked,
            receivedWhileBlocked,
        )

    blast, client, paused, sent, received = run(anyReactor, work, timeout=120)
    assert received == 0
    assert paused >= 1
    # Bounded: the kernel's buffers plus about one bufferSize and one chunk
    # in user space, nowhere near the total.
    assert sent < 24 * 1000 * 1000
    assert client.count == total
    assert client.hash.hexdigest() == blast.hash.hexdigest()
    assert blast.resumed >= 1


@implementer(interfaces.IPullProducer)
class PullChunks:
    def __init__(self, transport: Any, chunks: list[bytes]) -> None:
        self.transport = transport
        self.chunks = list(chunks)
        self.calls = 0

    def resumeProducing(self) -> None:
        self.calls += 1
        if self.chunks:
            self.transport.write(self.chunks.pop(0))
        else:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self.chunks = []


def test_pullProducerDrivenByDrain(anyReactor: Any) -> None:
    """
    A pull producer is asked for more each time the buffer drains, and the
    connection closes after it unregisters.
    """
    chunks = [bytes([i]) * (1000 + i) for i in range(200)]

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor)
        producer = PullChunks(server.transport, chunks)
        server.transport.registerProducer(producer, False)
        received = yield client.done
        yield port.stopListening()
        return producer, received

    producer, received = run(anyReactor, work)
    assert received == b"".join(chunks)
    assert producer.calls == len(chunks) + 1


def test_pausedReadingPushesBackOnThePeer(uring: Any) -> None:
    """
    A transport whose reading is paused stops taking data from the kernel:
    a peer writing to it soon finds the socket full, and nothing is
    delivered until reading resumes; then all of it arrives in order.
    """

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = uring.listenTCP(0, serverFactory(servers), interface="127.0.0.1")
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        peer.setblocking(False)
        while not servers:
            yield sleep(uring, 0.001)
        server = servers[0]
        server.transport.pauseProducing()
        yield sleep(uring, 0.05)
        sent = hashlib.sha256()
        total = 0
        block = os.urandom(65536)
        stalls = 0
        while stalls < 20 and total < 512 * 1024 * 1024:
            try:
                n = peer.send(block)
            except BlockingIOError:
                stalls += 1
                yield sleep(uring, 0.01)
                continue
            sent.update(block[:n])
            total += n
        deliveredWhilePaused = sum(map(len, server.chunks))
        server.transport.resumeProducing()
        remaining = total
        while sum(map(len, server.chunks)) < remaining:
            yield sleep(uring, 0.01)
        peer.close()
        yield server.done
        yield port.stopListening()
        return total, deliveredWhilePaused, sent, server

    total, deliveredWhilePaused, sent, server = run(uring, work)
    # At most the one receive that was already in flight when reading
    # paused; the rest stays in the kernel, which stops the peer.
    assert deliveredWhilePaused == 0
    assert total < 64 * 1024 * 1024
    received = b"".join(server.chunks)
    assert len(received) == total
    assert hashlib.sha256(received).hexdigest() == sent.hexdigest()


def test_removedReaderLeavesTheSocketAlone(anyReactor: Any) -> None:
    """
    After C{reactor.removeReader(transport)} the reactor takes nothing more
    from the socket: data the peer sends stays in the kernel, where another
    reader of the same descriptor (one adopted with C{adoptStreamConnection},
    a child process) finds it, as on epoll; C{addReader} delivers it in
    order.
    """
    _removedReaderLeavesTheSocketAlone(anyReactor)


def test_removedReaderLeavesTheSocketAloneWithoutProvidedBuffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The same with single receives into the transport's own buffer (no
    provided-buffer ring: kernels before 5.19).
    """
    monkeypatch.setenv("URINGREACTOR_DISABLE", "buf_ring")
    reactor = IOUringReactor()
    try:
        assert reactor._driver.buffers is None
        _removedReaderLeavesTheSocketAlone(reactor)
    finally:
        _release(reactor)


def _removedReaderLeavesTheSocketAlone(anyReactor: Any) -> None:
    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = anyReactor.listenTCP(0, serverFactory(servers), interface="127.0.0.1")
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        while not servers:
            yield sleep(anyReactor, 0.001)
        server = servers[0]
        peer.sendall(b"first ")
        while not server.chunks:
            yield sleep(anyReactor, 0.001)
        anyReactor.removeReader(server.transport)
        yield sleep(anyReactor, 0.05)
        peer.sendall(b"left in the kernel")
        yield sleep(anyReactor, 0.1)
        deliveredWhileRemoved = b"".join(server.chunks)
        inKernel = server.transport.socket.recv(
            100, socket.MSG_PEEK | socket.MSG_DONTWAIT
        )
        anyReactor.addReader(server.transport)
        while b"".join(server.chunks) != b"first left in the kernel":
            yield sleep(anyReactor, 0.01)
        peer.close()
        yield server.done
        yield port.stopListening()
        return deliveredWhileRemoved, inKernel

    deliveredWhileRemoved, inKernel = run(anyReactor, work)
    assert deliveredWhileRemoved == b"first "
    assert inKernel == b"left in the kernel"


def _connectFailure(reactor: Any, host: str, port: int, timeout: float) -> Any:
    class Recorder(ClientFactory):
        def __init__(self) -> None:
            self.failed: Deferred[Any] = Deferred()

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            # Wrapped: a Failure given to callback() would become an errback.
            self.failed.callback([reason])

    factory = Recorder()
    factory.protocol = Protocol
    reactor.connectTCP(host, port, factory, timeout=timeout)
    return factory.failed


def _closedPort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_connectionRefused(anyReactor: Any) -> None:
    [reason] = run(
        anyReactor, lambda: _connectFailure(anyReactor, "127.0.0.1", _closedPort(), 5)
    )
    assert reason.check(error.ConnectionRefusedError)


def test_connectTimeout(anyReactor: Any) -> None:
    """
    A connection attempt that gets no answer fails with TimeoutError.  A
    listener with a full backlog that is never accepted drops new SYNs.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        [reason] = run(
            anyReactor, lambda: _connectFailure(anyReactor, "127.0.0.1", port, 0.5)
        )
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert reason.check(error.TimeoutError)


def test_cannotListenOnBusyPort(anyReactor: Any) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(error.CannotListenError):
            anyReactor.listenTCP(
                busy.getsockname()[1], Factory(), interface="127.0.0.1"
            )
    finally:
        busy.close()


def test_peerResetIsConnectionLost(anyReactor: Any) -> None:
    """
    A peer that resets the connection makes connectionLost report
    ConnectionLost, as on epoll.
    """

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor)
        client.transport.abortConnection()
        yield server.done
        yield client.done
        yield port.stopListening()
        return client.reason, server.reason

    clientReason, serverReason = run(anyReactor, work)
    assert clientReason.check(error.ConnectionAborted)
    assert serverReason.check(error.ConnectionLost)


def test_ipv6AndBindAddress(anyReactor: Any) -> None:
    """
    IPv6 works, and bindAddress sets the client's local address.
    """
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 on this machine")
    localPort = _closedPort()

    @inlineCallbacks
    def work() -> Any:
        servers: list[Any] = []
        port = anyReactor.listenTCP(0, serverFactory(servers), interface="::1")
        client = Collect()
        anyReactor.connectTCP(
            "::1",
            port.getHost().port,
            clientFactory(client),
            bindAddress=("::1", localPort),
        )
        yield client.made
        while not servers:
            yield sleep(anyReactor, 0.001)
        client.transport.write(b"over six")
        client.transport.loseConnection()
        data = yield servers[0].done
        yield port.stopListening()
        return data, servers[0].transport

    data, serverTransport = run(anyReactor, work)
    assert data == b"over six"
    peer = serverTransport.getPeer()
    assert peer.host == "::1"
    assert peer.port == localPort


def test_halfClose(anyReactor: Any) -> None:
    """
    loseWriteConnection sends EOF while the other direction stays open.
    """
    from twisted.internet.interfaces import IHalfCloseableProtocol

    @implementer(IHalfCloseableProtocol)
    class EchoAfterEOF(Collect):
        def readConnectionLost(self) -> None:
            data = b"".join(self.chunks)
            self.transport.write(data[::-1])
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:
            pass

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor, cls=EchoAfterEOF)
        client.transport.write(b"abcdef")
        client.transport.loseWriteConnection()
        data = yield client.done
        yield port.stopListening()
        return data

    assert run(anyReactor, work) == b"fedcba"


def test_tcpOptions(uring: Any) -> None:
    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(uring)
        t = client.transport
        t.setTcpNoDelay(True)
        t.setTcpKeepAlive(True)
        result: tuple[Any, ...] = (t.getTcpNoDelay(), t.getTcpKeepAlive())
        t.setTcpNoDelay(False)
        t.setTcpKeepAlive(False)
        result += (t.getTcpNoDelay(), t.getTcpKeepAlive())
        hostPeer = (t.getHost(), server.transport.getPeer())
        t.loseConnection()
        yield server.done
        yield port.stopListening()
        return result, hostPeer

    options, (host, peer) = run(uring, work)
    assert options == (True, True, False, False)
    assert host == peer


def test_logEventsCarryTheProtocolsPrefix(anyReactor: Any) -> None:
    """
    What a protocol logs from C{dataReceived}, and the error logged when it
    raises, carry its transport's log prefix as C{system}, as on epoll.
    """
    from twisted.python import log

    events: list[dict[str, Any]] = []

    class Talker(Collect):
        def dataReceived(self, data: bytes) -> None:
            log.msg("heard", data)
            if data == b"boom":
                raise ValueError("boom")

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor, cls=Talker)
        client.transport.write(b"hello")
        while not any("heard" in e.get("message", ()) for e in events):
            yield sleep(anyReactor, 0.001)
        client.transport.write(b"boom")
        yield server.done
        yield port.stopListening()
        return server.transport.logPrefix()

    log.addObserver(events.append)
    try:
        prefix = run(anyReactor, work)
    finally:
        log.removeObserver(events.append)
    heard = [e for e in events if "heard" in e.get("message", ())]
    errors = [e for e in events if e.get("isError")]
    assert heard and all(e["system"] == prefix for e in heard)
    assert len(errors) == 1 and errors[0]["system"] == prefix
    assert errors[0]["failure"].check(ValueError)


def test_serverHostAddress(anyReactor: Any) -> None:
    """
    A server connection's C{getHost} is its local address, a new object on
    each call, and unavailable once the connection is lost, as on epoll
    (where the socket is gone then).
    """

    @inlineCallbacks
    def work() -> Any:
        port, client, server = yield connectPair(anyReactor)
        first = server.transport.getHost()
        second = server.transport.getHost()
        client.transport.loseConnection()
        yield server.done
        try:
            server.transport.getHost()
        except AttributeError:
            afterLoss = None
        else:
            afterLoss = "an address"
        listening = port.getHost()
        yield port.stopListening()
        return first, second, afterLoss, listening

    first, second, afterLoss, listening = run(anyReactor, work)
    assert first == second == listening
    assert first is not second
    assert afterLoss is None


@pytest.mark.parametrize("multishot", [True, False], ids=["multishot", "single-shot"])
def test_burstOfConnectionsAcceptedInFewIterations(multishot: bool) -> None:
    """
    A burst of connections waiting in the backlog is accepted within a few
    loop iterations, with multishot accept (one completion each) and without
    it (before 5.19: after each accept completion the port takes more from
    the backlog, as epoll's doRead does), not one per iteration.
    """
    from uringreactor.features import Features
    from uringreactor.reactor import IOUringReactor

    environ = {} if multishot else {"URINGREACTOR_DISABLE": "multishot_accept"}
    features = Features.detect(environ=environ)
    if multishot:
        requireFeature(features, "multishot_accept")
    reactor = IOUringReactor(features)
    made: list[Any] = []

    class Counting(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    try:
        port = reactor.listenTCP(
            0, Factory.forProtocol(Counting), backlog=512, interface="127.0.0.1"
        )
        clients = [
            socket.create_connection(("127.0.0.1", port.getHost().port))
            for _ in range(250)
        ]
        iterations = 0
        while len(made) < len(clients) and iterations < 100:
            reactor.doIteration(0.5)
            iterations += 1
        assert len(made) == len(clients)
        assert iterations <= 6, iterations
        for c in clients:
            c.close()
        for p in made:
            p.transport.abortConnection()
        port.stopListening()
    finally:
        reactor._ring.close()


class PausingCollect(Collect):
    """
    Collects what it receives, pausing reading for a moment after every
    seventh delivery.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if len(self.chunks) % 7 == 0:
            self.pauses += 1
            self.transport.pauseProducing()  # type: ignore[union-attr]
            reactor = self.transport.reactor  # type: ignore[union-attr]
            reactor.callLater(0.002, self.transport.resumeProducing)  # type: ignore[union-attr]


def test_copyingReceiverReadsBulkOnReadiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Where reads are copied out of the provided buffers (PyPy; forced here
    on CPython too), a read that fills a buffer switches the connection to
    recv() on readiness, and a short read switches it back to the
    multishot receive: 16 MiB of bulk data with the protocol pausing now
    and then, then small messages, then end of file, all arrive in order,
    with the reads of each kind in their place.
    """
    from uringreactor import receiving

    monkeypatch.setattr(receiving, "HANDS_OVER", 0)
    reactor = IOUringReactor()
    try:
        requireFeature(reactor._ring.features, "multishot_recv")
        readable = []
        original = receiving.CopyingBufferReceiver._readable

        def spy(self: Any, res: int) -> None:
            readable.append(res)
            original(self, res)

        monkeypatch.setattr(receiving.CopyingBufferReceiver, "_readable", spy)
        bulk = bytes(range(251)) * (16 * 1024 * 1024 // 251)
        small = [b"small message %d\n" % i for i in range(50)]

        @inlineCallbacks
        def work() -> Any:
            servers: list[Any] = []
            port = reactor.listenTCP(
                0, serverFactory(servers, PausingCollect), interface="127.0.0.1"
            )
            peer = socket.create_connection(("127.0.0.1", port.getHost().port))
            peer.setblocking(False)
            while not servers:
                yield sleep(reactor, 0.001)
            server = servers[0]
            receiver = server.transport._receiver
            assert type(receiver) is receiving.CopyingBufferReceiver
            sent = 0
            while sent < len(bulk):
                try:
                    sent += peer.send(bulk[sent : sent + 65536])
                except BlockingIOError:
                    yield sleep(reactor, 0.001)
            while sum(map(len, server.chunks)) < len(bulk):
                yield sleep(reactor, 0.001)
            wentBulk = len(readable)
            for message in small:
                peer.send(message)
                yield sleep(reactor, 0.002)
            backToMultishot = not receiver.bulk
            peer.shutdown(socket.SHUT_WR)
            received = yield server.done
            peer.close()
            yield port.stopListening()
            return server, received, wentBulk, backToMultishot

        server, received, wentBulk, backToMultishot = run(reactor, work)
    finally:
        _release(reactor)
    assert received == bulk + b"".join(small)
    assert server.pauses > 10
    assert wentBulk > 10
    assert backToMultishot
    assert isinstance(server.reason.value, error.ConnectionDone)
