"""
Real Twisted applications on the io_uring reactor, used as a user would:
a twisted.names DNS server answering over UDP and TCP, and a child process
spawned, fed and its output read.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import error
from twisted.internet.defer import inlineCallbacks

from tests.conftest import run
from tests.test_load import Collect
from uringreactor.reactor import IOUringReactor


def test_dnsServerOverUdpAndTcp(uring: IOUringReactor) -> None:
    """
    twisted.names serves an authoritative zone on UDP and TCP, and its own
    client resolves names from it over both.
    """
    from twisted.names import authority, client, dns, server

    records = {
        b"example.test": [
            dns.Record_A("10.1.2.3", ttl=60),
            dns.Record_TXT(b"served by io_uring", ttl=60),
        ]
    }

    class Zone(authority.FileAuthority):
        def __init__(self) -> None:
            authority.FileAuthority.__init__(self, "example.test")
            self.soa = (  # type: ignore[assignment]
                b"example.test",
                dns.Record_SOA(mname=b"ns.example.test", rname=b"root.example.test"),
            )
            self.records = records  # type: ignore[assignment]

    @inlineCallbacks
    def work() -> Any:
        factory = server.DNSServerFactory(authorities=[Zone()])
        protocol = dns.DNSDatagramProtocol(factory)
        # The same port number for TCP and UDP, as DNS clients expect.
        for _ in range(20):
            tcp = uring.listenTCP(0, factory, interface="127.0.0.1")
            port = tcp.getHost().port
            try:
                udp = uring.listenUDP(port, protocol, interface="127.0.0.1")
                break
            except error.CannotListenError:
                yield tcp.stopListening()
        resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=uring)
        # Over UDP (the resolver's default).
        answers, _, _ = yield resolver.lookupAddress("example.test")
        # Over TCP, through a resolver that only speaks TCP.
        tcpMessage = yield resolver.queryTCP(
            [dns.Query(b"example.test", dns.TXT, dns.IN)]
        )
        yield udp.stopListening()
        yield tcp.stopListening()
        return answers, tcpMessage

    answers, tcpMessage = run(uring, work)
    assert [a.payload.dottedQuad() for a in answers if a.type == 1] == ["10.1.2.3"]
    txt = [a.payload.data for a in tcpMessage.answers if a.type == 16]
    assert txt == [[b"served by io_uring"]]


def test_spawnedProcessOutputAndExit(uring: IOUringReactor) -> None:
    """
    A child process is spawned, fed on stdin, its stdout and stderr read
    and its exit status reported.
    """
    script = (
        "import sys\n"
        "data = sys.stdin.read()\n"
        "sys.stdout.write(data.upper())\n"
        "sys.stderr.write('err:' + str(len(data)))\n"
        "sys.exit(7)\n"
    )

    class Child(Collect):
        def connectionMade(self) -> None:
            self.transport.write(b"hello child " * 1000)
            self.transport.closeStdin()

    @inlineCallbacks
    def work() -> Any:
        child = Child()
        uring.spawnProcess(child, sys.executable, [sys.executable, "-c", script])
        code = yield child.ended
        return child, code

    child, code = run(uring, work)
    assert code == 7
    assert child.out == b"HELLO CHILD " * 1000
    assert child.err == b"err:12000"
