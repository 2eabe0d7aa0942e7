"""
Randomised equivalence with the epoll reactor: Hypothesis drives random
sequences of transport calls (write, writeSequence, pauseProducing,
resumeProducing, loseConnection, loseWriteConnection, abortConnection) from
both ends of a connection, on a fresh epoll reactor and a fresh io_uring
reactor, and the two must agree on the bytes each end receives and on why
each end's connection was lost.

Each step is followed by a pause long enough for the loopback connection to
settle, so the outcome depends on the sequence of calls and not on timing.
Calls are made only on connections that are not yet lost.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from tests.conftest import run, sleep
from uringreactor.reactor import IOUringReactor

SETTLE = 0.03

actions = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 70000)),
    st.tuples(st.just("writeSequence"), st.lists(st.integers(0, 3000), max_size=6)),
    st.tuples(st.just("pauseProducing"), st.none()),
    st.tuples(st.just("resumeProducing"), st.none()),
    st.tuples(st.just("loseConnection"), st.none()),
    st.tuples(st.just("loseWriteConnection"), st.none()),
    st.tuples(st.just("abortConnection"), st.none()),
    st.tuples(st.just("nothing"), st.none()),
)
sides = st.lists(st.tuples(st.sampled_from(["client", "server"]), actions), max_size=8)


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.events: list[str] = []
        self.lost: Deferred[None] = Deferred()
        self.made: Deferred[None] = Deferred()
        self.counter = 0

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")

    def connectionLost(self, reason: Any) -> None:
        self.events.append("connectionLost:" + type(reason.value).__name__)
        self.lost.callback(None)

    def payload(self, n: int) -> bytes:
        # Distinct, reproducible bytes so reordering would show.
        start = self.counter
        self.counter += n
        return bytes((start + i) % 253 for i in range(n))


def scenario(reactorFactory: Any, steps: list[tuple[str, tuple[str, Any]]]) -> Any:
    reactor = reactorFactory()
    client, server = Recorder(), Recorder()

    @inlineCallbacks
    def work() -> Any:
        sf = Factory()
        sf.buildProtocol = lambda addr: server  # type: ignore[method-assign]
        port = reactor.listenTCP(0, sf, interface="127.0.0.1")
        cf = ClientFactory()
        cf.buildProtocol = lambda addr: client  # type: ignore[method-assign]
        reactor.connectTCP("127.0.0.1", port.getHost().port, cf)
        yield client.made
        yield server.made
        for who, (name, arg) in steps:
            proto = client if who == "client" else server
            t = proto.transport
            if proto.lost.called:
                # Calls on a lost transport are undefined (epoll raises from
                # some of them); a working program does not make them.
                name = "nothing"
            if name == "write":
                t.write(proto.payload(arg))
            elif name == "writeSequence":
                t.writeSequence([proto.payload(n) for n in arg])
            elif name != "nothing":
                getattr(t, name)()
            yield sleep(reactor, SETTLE)
        # Let everything finish: read again, then close what is still open.
        for proto in (client, server):
            if not proto.lost.called:
                proto.transport.resumeProducing()
        yield sleep(reactor, SETTLE)
        for proto in (client, server):
            if not proto.lost.called:
                proto.transport.loseConnection()
        yield sleep(reactor, SETTLE)
        for proto in (client, server):
            if not proto.lost.called:
                proto.transport.abortConnection()
        yield client.lost
        yield server.lost
        yield port.stopListening()

    run(reactor, work, timeout=30)
    return (
        bytes(client.received),
        bytes(server.received),
        client.events,
        server.events,
    )


@settings(
    max_examples=int(os.environ.get("EQUIVALENCE_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sides)
def test_sameOutcomeAsEpoll(steps: list[tuple[str, tuple[str, Any]]]) -> None:
    epoll = scenario(EPollReactor, steps)
    iouring = scenario(IOUringReactor, steps)
    assert iouring[2:] == epoll[2:], "connection events differ"
    assert len(iouring[0]) == len(epoll[0]) and iouring[0] == epoll[0]
    assert len(iouring[1]) == len(epoll[1]) and iouring[1] == epoll[1]
