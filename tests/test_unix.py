"""
UNIX stream sockets: completion-based transports, descriptor passing in
order with the stream, and no descriptor leaked when a transport closes
with received descriptors not yet delivered.  Where it matters the same
test runs on epoll, to show the two agree.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from tests.conftest import openFds, run, sleep
from tests.test_tcp_behaviour import Collect, clientFactory, serverFactory
from uringreactor import unix
from uringreactor.reactor import IOUringReactor


def unixPair(reactor: Any, path: Any, client: Protocol, cls: type) -> Any:
    """
    Listen on C{path}, connect C{client}, fire with (port, server protocol)
    once the server side is connected.
    """
    servers: list[Any] = []
    port = reactor.listenUNIX(path, serverFactory(servers, cls))
    reactor.connectUNIX(path, clientFactory(client))

    @inlineCallbacks
    def wait() -> Any:
        while not servers or servers[0].transport is None:
            yield sleep(reactor, 0.001)
        return port, servers[0]

    return wait()


def test_unixStreamIsCompletionBased(uring: IOUringReactor, tmp_path: Any) -> None:
    """
    UNIX stream connections are io_uring transports, not polled
    descriptors, and carry a large transfer intact both ways.
    """
    payload = os.urandom(4 * 1024 * 1024 + 17)

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    @inlineCallbacks
    def work() -> Any:
        client = Collect()
        port, server = yield unixPair(uring, str(tmp_path / "s"), client, Echo)
        yield client.made
        assert isinstance(server.transport, unix.Server)
        assert isinstance(client.transport, unix.Client)
        assert server.transport not in uring._reads
        assert client.transport not in uring._reads
        before = uring.ioCounters()["sqes"]
        client.transport.write(payload)
        while sum(map(len, client.chunks)) < len(payload):
            yield sleep(uring, 0.005)
        client.transport.loseConnection()
        received = yield client.done
        yield port.stopListening()
        return received, uring.ioCounters()["sqes"] - before

    received, sqes = run(uring, work)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert sqes > 0


@implementer(IFileDescriptorReceiver)
class RecordDescriptors(Collect):
    """
    Records, in order, each descriptor received (by the inode it names) and
    each byte.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []

    def fileDescriptorReceived(self, fd: int) -> None:
        self.events.append(("fd", os.fstat(fd).st_ino))
        os.close(fd)

    def dataReceived(self, data: bytes) -> None:
        self.events.extend(data)
        super().dataReceived(data)


def test_descriptorsTravelInOrderWithTheStream(anyReactor: Any, tmp_path: Any) -> None:
    """
    Descriptors queued between writes arrive before the byte written after
    them and after every byte written before them, each naming the file it
    was sent for.
    """
    pipes = [os.pipe() for _ in range(40)]

    class Sender(Protocol):
        def connectionMade(self) -> None:
            for i, (_, w) in enumerate(pipes):
                self.transport.sendFileDescriptor(w)
                self.transport.write(b"%c" % (65 + i % 26))
            self.transport.loseConnection()

    @inlineCallbacks
    def work() -> Any:
        client = RecordDescriptors()
        port, _ = yield unixPair(anyReactor, str(tmp_path / "s"), client, Sender)
        yield client.done
        yield port.stopListening()
        return client.events

    # A pipe's two ends share an inode.
    expected: list[Any] = []
    for i, (r, _) in enumerate(pipes):
        expected.append(("fd", os.fstat(r).st_ino))
        expected.append(65 + i % 26)
    try:
        events = run(anyReactor, work)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert events == expected


def test_undeliveredDescriptorsAreClosed(anyReactor: Any, tmp_path: Any) -> None:
    """
    Descriptors that reached a transport whose protocol had paused reading,
    and were never delivered because the transport was then closed, are
    closed: none is left open in the process.
    """
    received: list[int] = []

    @implementer(IFileDescriptorReceiver)
    class Paused(Protocol):
        def connectionMade(self) -> None:
            self.transport.pauseProducing()

        def fileDescriptorReceived(self, fd: int) -> None:
            received.append(fd)

    class Sender(Protocol):
        def connectionMade(self) -> None:
            for _ in range(5):
                self.transport.sendFileDescriptor(self.transport.fileno())
                self.transport.write(b"x")

    fdsBefore = openFds()

    @inlineCallbacks
    def work() -> Any:
        client = Paused()
        port, server = yield unixPair(anyReactor, str(tmp_path / "s"), client, Sender)
        # Long enough for the descriptors to reach the client and for any
        # receive already in flight to complete.
        yield sleep(anyReactor, 0.2)
        lost: Deferred[None] = Deferred()
        client.connectionLost = lambda reason: lost.callback(None)  # type: ignore[method-assign,assignment]
        client.transport.abortConnection()
        yield lost
        server.transport.loseConnection()
        yield port.stopListening()
        yield sleep(anyReactor, 0.05)

    run(anyReactor, work)
    assert received == []
    leaked = openFds() - fdsBefore
    # The reactor's own descriptors (epoll or ring, waker) may be new.
    for fd in leaked:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            # The descriptor openFds() itself used to list the directory.
            continue
        assert not target.startswith("socket:"), (fd, target)
