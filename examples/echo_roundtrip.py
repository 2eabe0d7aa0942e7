"""
A small Twisted program: an echo server and a client that sends one message
through it, on the reactor named by --reactor (installed the way twistd and
trial install it, through Twisted's reactor plugins).

    python examples/echo_roundtrip.py --reactor=iouring

Prints the reactor in use and the echoed message; exits 0 on success.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reactor", default="iouring")
    args = parser.parse_args()

    from twisted.application.reactors import installReactor

    installReactor(args.reactor)

    from twisted.internet import defer, endpoints, protocol, task

    class Echo(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    class Once(protocol.Protocol):
        def __init__(self) -> None:
            self.received = defer.Deferred()

        def connectionMade(self) -> None:
            self.transport.write(b"hello through the reactor")

        def dataReceived(self, data: bytes) -> None:
            self.transport.loseConnection()
            self.received.callback(data)

    async def roundtrip(r: object) -> None:
        port = await endpoints.TCP4ServerEndpoint(r, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        client = Once()
        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(r, "127.0.0.1", port.getHost().port),
            client,
        )
        data = await client.received
        await port.stopListening()
        print(f"reactor: {type(r).__name__}")
        print(f"echoed: {data.decode()}")

    task.react(lambda r: defer.ensureDeferred(roundtrip(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
