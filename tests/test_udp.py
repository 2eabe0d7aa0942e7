"""
UDP on io_uring: order, sources, sizes, refusals and errors, each compared
with the epoll reactor where the two must agree.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import DatagramProtocol

from tests.conftest import _release, run, sleep
from uringreactor import udp
from uringreactor.features import Features
from uringreactor.reactor import IOUringReactor


class Record(DatagramProtocol):
    """
    Records every datagram with its source; fires C{waiting} once C{count}
    have arrived.
    """

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []
        self.refused = 0
        self.waiting: Deferred[None] | None = None
        self.count = 0

    def expect(self, count: int) -> Deferred[None]:
        self.count = count
        self.waiting = Deferred()
        self._check()
        return self.waiting

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        self._check()

    def connectionRefused(self) -> None:
        self.refused += 1
        self._check()

    def _check(self) -> None:
        if self.waiting is not None and (
            len(self.received) >= self.count or self.refused
        ):
            d, self.waiting = self.waiting, None
            d.callback(None)


def test_datagramsArriveInOrderFromTheirSource(anyReactor: Any) -> None:
    """
    Datagrams of many sizes, written in bursts, arrive in the order written
    with the sender's address.
    """
    sizes = [(i * 37) % 1200 for i in range(200)]

    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        sender = Record()
        rport = anyReactor.listenUDP(0, receiver, interface="127.0.0.1")
        sport = anyReactor.listenUDP(0, sender, interface="127.0.0.1")
        target = ("127.0.0.1", rport.getHost().port)
        for burst in range(10):
            for i in range(burst * 20, burst * 20 + 20):
                sender.transport.write(bytes([i % 251]) * sizes[i], target)
            yield sleep(anyReactor, 0.005)
        yield receiver.expect(len(sizes))
        source = ("127.0.0.1", sport.getHost().port)
        yield rport.stopListening()
        yield sport.stopListening()
        return receiver.received, source

    received, source = run(anyReactor, work, timeout=20)
    assert [data for data, _ in received] == [
        bytes([i % 251]) * size for i, size in enumerate(sizes)
    ]
    assert {addr for _, addr in received} == {source}


def _withoutMultishotReceive() -> IOUringReactor:
    return IOUringReactor(Features.detect({"URINGREACTOR_DISABLE": "multishot_recv"}))


@pytest.mark.parametrize(
    "make",
    [EPollReactor, IOUringReactor, _withoutMultishotReceive],
    ids=["epoll", "iouring", "iouring-single-receives"],
)
def test_waitingDatagramsAreReadTogether(make: Any) -> None:
    """
    Datagrams waiting in a port's socket buffer are read together, as
    epoll's C{doRead} reads until the buffer is empty, and not one per
    reactor iteration: at one a loop, a port that falls behind a burst lets
    its socket buffer overflow, and the kernel drops what does not fit.
    """
    burst = 50
    reactor = make()
    try:
        receiver = Record()
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        # The port's receive reaches the kernel.
        reactor.iterate(0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for i in range(burst):
                peer.sendto(b"%d" % i, ("127.0.0.1", port.getHost().port))
        iterations = 0
        while len(receiver.received) < burst and iterations < 10:
            reactor.iterate(0.5)
            iterations += 1
        port.stopListening()
        reactor.iterate(0)
    finally:
        _release(reactor)
    assert [data for data, _ in receiver.received] == [b"%d" % i for i in range(burst)]


def test_emptyAndTruncatedDatagrams(anyReactor: Any) -> None:
    """
    An empty datagram arrives empty; one longer than C{maxPacketSize} is cut
    to it.
    """

    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        rport = anyReactor.listenUDP(
            0, receiver, interface="127.0.0.1", maxPacketSize=100
        )
        sender = anyReactor.listenUDP(0, Record(), interface="127.0.0.1")
        target = ("127.0.0.1", rport.getHost().port)
        sender.write(b"", target)
        sender.write(b"y" * 300, target)
        sender.write(b"z" * 100, target)
        yield receiver.expect(3)
        yield rport.stopListening()
        yield sender.stopListening()
        return [data for data, _ in receiver.received]

    assert run(anyReactor, work, timeout=20) == [b"", b"y" * 100, b"z" * 100]


def test_ipv6(anyReactor: Any) -> None:
    """
    An IPv6 port receives from and answers an IPv6 source.
    """

    class Echo(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:
            self.transport.write(data.upper(), addr)

    @inlineCallbacks
    def work() -> Any:
        server = anyReactor.listenUDP(0, Echo(), interface="::1")
        client = Record()
        cport = anyReactor.listenUDP(0, client, interface="::1")
        cport.write(b"over six", ("::1", server.getHost().port))
        yield client.expect(1)
        yield server.stopListening()
        yield cport.stopListening()
        return client.received

    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback address")
    [(data, addr)] = run(anyReactor, work, timeout=20)
    assert data == b"OVER SIX"
    assert addr[0] == "::1"


def test_connectedPortIsToldOfRefusal(uring: IOUringReactor) -> None:
    """
    A connected port writing to a port nobody listens on has its protocol's
    C{connectionRefused} called, and stays open: written to again, it is
    told again.

    (The epoll reactor differs here: when the refusal arrives while no
    datagram is waiting, epoll reports only an error event, which that
    reactor treats as a lost connection, and it closes the port.)
    """
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    deadPort = closed.getsockname()[1]
    closed.close()

    @inlineCallbacks
    def work() -> Any:
        client = Record()
        port = uring.listenUDP(0, client, interface="127.0.0.1")
        port.connect("127.0.0.1", deadPort)
        refusals = []
        for _ in range(2):
            waiting = client.expect(1000)
            port.write(b"anyone?")
            yield waiting
            refusals.append(client.refused)
            client.refused = 0
        assert port.connected
        yield port.stopListening()
        return refusals

    assert run(uring, work, timeout=20) == [1, 1]


def test_writeChecksItsArgumentsAtOnce(anyReactor: Any) -> None:
    """
    Errors the epoll reactor raises from C{write} are raised from it on
    io_uring too, before anything is queued.
    """

    def work() -> Any:
        port = anyReactor.listenUDP(0, Record(), interface="127.0.0.1")
        outcomes = []
        for datagram, addr in [
            (b"x" * 70000, ("127.0.0.1", 9)),
            (b"x", ("localhost", 9)),
            (b"x", ("::1", 9)),
            ("text", ("127.0.0.1", 9)),
        ]:
            try:
                port.write(datagram, addr)
            except Exception as e:
                outcomes.append(type(e))
        return port.stopListening().addCallback(lambda _: outcomes)

    assert run(anyReactor, work, timeout=20) == [
        error.MessageLengthError,
        error.InvalidAddressError,
        error.InvalidAddressError,
        TypeError,
    ]


def test_portsAreCompletionBased(uring: IOUringReactor) -> None:
    """
    UDP ports are io_uring ports, not polled descriptors: neither waits
    for readiness, and a burst of datagrams written in one iteration goes
    out in one C{sendmmsg}, not as an operation (and a completion) each.
    """

    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        rport = uring.listenUDP(0, receiver, interface="127.0.0.1")
        sport = uring.listenUDP(0, Record(), interface="127.0.0.1")
        assert isinstance(rport, udp.Port) and isinstance(sport, udp.Port)
        assert rport not in uring._reads and sport not in uring._writes
        before = uring.ioCounters()["sqes"]
        for i in range(50):
            sport.write(b"%d" % i, ("127.0.0.1", rport.getHost().port))
        yield receiver.expect(50)
        submitted = uring.ioCounters()["sqes"] - before
        yield rport.stopListening()
        yield sport.stopListening()
        return submitted

    # The receiving port's receive and what the Deferreds need, not one
    # operation per datagram.
    assert run(uring, work, timeout=20) < 10


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_addressIsFreeWhenStopListeningFires(anyReactor: Any, kind: str) -> None:
    """
    Once C{stopListening}'s Deferred fires, the port's address can be bound
    again at once, even when the port stops in the iteration it started in.
    """
    from twisted.internet.protocol import Factory, Protocol

    def listen(port: int) -> Any:
        if kind == "udp":
            return anyReactor.listenUDP(port, Record(), interface="127.0.0.1")
        return anyReactor.listenTCP(
            port, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )

    @inlineCallbacks
    def work() -> Any:
        rebound = 0
        for delay in (0.0, 0.01):
            first = listen(0)
            number = first.getHost().port
            if delay:
                yield sleep(anyReactor, delay)
            yield first.stopListening()
            second = listen(number)
            rebound += second.getHost().port == number
            yield second.stopListening()
        return rebound

    assert run(anyReactor, work, timeout=20) == 2


def test_datagramsWrittenBeforeStopListeningAllLeave(anyReactor: Any) -> None:
    """
    Datagrams written just before C{stopListening}, in a burst, all
    arrive, in order, and the port's address is free once its Deferred
    fires.
    """
    count = 300

    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        rport = anyReactor.listenUDP(0, receiver, interface="127.0.0.1")
        # A receive buffer large enough for all of them: UDP drops what
        # does not fit, on any reactor.
        rport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sender = anyReactor.listenUDP(0, Record(), interface="127.0.0.1")
        address = sender.getHost()
        target = ("127.0.0.1", rport.getHost().port)
        for i in range(count):
            sender.write(b"%d" % i, target)
        yield sender.stopListening()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", address.port))
        finally:
            probe.close()
        yield receiver.expect(count)
        yield rport.stopListening()
        return receiver.received

    received = run(anyReactor, work, timeout=30)
    assert [data for data, _ in received] == [b"%d" % i for i in range(count)]


def test_resumedReceiveNeverSharesACancelledOnesMemory(uring: IOUringReactor) -> None:
    """
    Pausing a port cancels its receive, which the kernel may still complete
    into that receive's memory; the receive armed when reading resumes has
    memory of its own, and datagrams still arrive whole and in order.
    """

    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        rport = uring.listenUDP(0, receiver, interface="127.0.0.1")
        sport = uring.listenUDP(0, Record(), interface="127.0.0.1")
        address = ("127.0.0.1", rport.getHost().port)
        shared = []
        for i in range(20):
            # Out of datagramReceived (where expect fired), so that the
            # port has armed its next receive.
            yield sleep(uring, 0)
            cancelled = rport._recvOp
            rport.stopReading()
            rport.startReading()
            resumed = rport._recvOp
            assert cancelled is not None and resumed is not None
            # (A port that polls and then reads gives the kernel no
            # memory at all.)
            shared.append(
                resumed.memory is not None and resumed.memory is cancelled.memory
            )
            sport.write(b"datagram %d" % i, address)
            yield receiver.expect(i + 1)
        yield rport.stopListening()
        yield sport.stopListening()
        return shared, [data for data, _ in receiver.received]

    shared, received = run(uring, work, timeout=20)
    assert not any(shared)
    assert received == [b"datagram %d" % i for i in range(20)]


def _sendingStopsOnce(monkeypatch: Any, after: int, errno_: int) -> list[int]:
    """
    Make the first batch of sends stop after C{after} datagrams with
    C{errno_}, as the kernel does when the socket's buffer is full or it
    refuses a datagram; later batches go through.  Returns a list that
    records the size of every batch.
    """
    real = udp.sendDatagrams
    batches: list[int] = []

    def sendDatagrams(fd, data, lengths, names, namelengths, count, error):  # type: ignore[no-untyped-def]
        batches.append(count)
        if len(batches) == 1:
            sent = real(fd, data, lengths, names, namelengths, after, error)
            assert sent == after
            error[0] = errno_
            return sent
        return real(fd, data, lengths, names, namelengths, count, error)

    monkeypatch.setattr(udp, "sendDatagrams", sendDatagrams)
    return batches


def _burst(uring: IOUringReactor, count: int) -> Any:
    @inlineCallbacks
    def work() -> Any:
        receiver = Record()
        rport = uring.listenUDP(0, receiver, interface="127.0.0.1")
        sender = uring.listenUDP(0, Record(), interface="127.0.0.1")
        target = ("127.0.0.1", rport.getHost().port)
        for i in range(count):
            sender.write(b"%d" % i, target)
        yield receiver.expect(count - 1)
        yield sleep(uring, 0.1)
        yield sender.stopListening()
        yield rport.stopListening()
        return [data for data, _ in receiver.received]

    return run(uring, work, timeout=20)


def test_fullSendBufferDelaysDatagrams(uring: IOUringReactor, monkeypatch: Any) -> None:
    """
    When the socket's buffer is full (EAGAIN), the datagrams not sent wait
    for room, announced by a poll, and then leave in order: none is lost.
    """
    import errno

    batches = _sendingStopsOnce(monkeypatch, 3, errno.EAGAIN)
    polls = uring.ioCounters()["sqes"]
    received = _burst(uring, 10)
    assert received == [b"%d" % i for i in range(10)]
    assert batches[:2] == [10, 7]
    assert uring.ioCounters()["sqes"] > polls


def test_refusedDatagramIsDroppedAndLogged(
    uring: IOUringReactor, monkeypatch: Any
) -> None:
    """
    A datagram the kernel refuses (here EHOSTUNREACH) is dropped, as on
    epoll, the error logged; the datagrams after it still leave, in order.
    """
    import errno

    from twisted.python import log

    logged: list[Any] = []
    log.addObserver(logged.append)
    try:
        batches = _sendingStopsOnce(monkeypatch, 3, errno.EHOSTUNREACH)
        received = _burst(uring, 10)
    finally:
        log.removeObserver(logged.append)
    assert received == [b"%d" % i for i in range(10) if i != 3]
    assert batches[:2] == [10, 6]
    errors = [e for e in logged if e.get("isError")]
    assert len(errors) == 1
    assert errors[0]["failure"].value.errno == errno.EHOSTUNREACH
