"""
Benchmark servers, on a reactor chosen by name.

    python bench/server.py REACTOR [--app APP] [--port N] [--tls]
                           [--unix PATH]

REACTOR is one of: iouring, iouring-nospin (without the spin before
blocking, URINGREACTOR_SPIN_US=0), epoll, poll, asyncio (Twisted on asyncio),
uvloop (Twisted on asyncio with uvloop), asyncio-plain and uvloop-plain (an
asyncio server without Twisted, as a reference; echo only).

The apps:

  - C{echo}: a TCP stream protocol that echoes every byte back; with
    C{--unix PATH} on a UNIX socket there instead, with C{--tls} over TLS
    (C{listenSSL}, Twisted's test certificate).
  - C{web}: twisted.web serving a 13-byte "Hello, world!" (keep-alive
    unless the client asks otherwise), its access log turned off (the same
    on every reactor); C{--tls} for HTTPS.
  - C{static}: twisted.web's C{File} resource over a directory holding
    C{64k} and C{1m}, files of 64 KiB and 1 MiB.
  - C{udp}: a C{DatagramProtocol} that sends every datagram back to its
    sender.
  - C{dns}: twisted.names answering over UDP from an in-memory zone,
    C{bench.example}, as C{twistd dns --pyzone} does.

Prints C{PORT n} once listening, runs until SIGTERM, then prints one JSON
line of counters (io_uring reactor only).
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any


def installReactor(name: str) -> None:
    """
    Install the Twisted reactor called C{name} (see the module's docstring).
    """
    if name in ("iouring", "iouring-nospin"):
        import os

        import uringreactor

        if name == "iouring-nospin":
            os.environ["URINGREACTOR_SPIN_US"] = "0"

        uringreactor.install()
    elif name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
    elif name == "poll":
        from twisted.internet import pollreactor

        pollreactor.install()
    elif name in ("asyncio", "uvloop"):
        import asyncio

        loop: asyncio.AbstractEventLoop
        if name == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
    else:
        raise SystemExit(f"unknown reactor {name!r}")


def _echoFactory() -> object:
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    return Factory.forProtocol(Echo)


def _webFactory() -> object:
    from twisted.web import resource, server

    class Hello(resource.Resource):
        isLeaf = True

        def render_GET(self, request: server.Request) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return b"Hello, world!"

    site = server.Site(Hello())
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def _staticFactory() -> object:
    import atexit
    import shutil
    import tempfile

    from twisted.web import server, static

    root = tempfile.mkdtemp(prefix="uringreactor-bench-")
    atexit.register(shutil.rmtree, root, True)
    for name, size in (("64k", 65536), ("1m", 1 << 20)):
        with open(f"{root}/{name}", "wb") as f:
            f.write(bytes(range(256)) * (size // 256))
    site = server.Site(static.File(root))
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


# The zone of the dns app, in the Python syntax of twistd dns --pyzone.
ZONE = """
zone = [
    SOA("bench.example", mname="ns.bench.example", rname="root.bench.example",
        serial=1, refresh="1H", retry="1H", expire="1H", minimum="1H"),
    A("bench.example", "127.0.0.1"),
    A("www.bench.example", "127.0.0.2"),
    NS("bench.example", "ns.bench.example"),
    A("ns.bench.example", "127.0.0.3"),
]
"""


def _listenDNS(reactor: Any, port: int) -> Any:
    import atexit
    import os
    import tempfile

    from twisted.names import authority, dns, server

    fd, path = tempfile.mkstemp(suffix=".py", prefix="uringreactor-zone-")
    os.write(fd, ZONE.encode())
    os.close(fd)
    atexit.register(os.unlink, path)
    factory = server.DNSServerFactory(authorities=[authority.PySourceAuthority(path)])
    factory.noisy = False
    return reactor.listenUDP(
        port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1"
    )


def _listenUDPEcho(reactor: Any, port: int) -> Any:
    from twisted.internet.protocol import DatagramProtocol

    class Echo(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:
            self.transport.write(data, addr)  # type: ignore[union-attr]

    return reactor.listenUDP(port, Echo(), interface="127.0.0.1")


def _tlsOptions() -> Any:
    from pathlib import Path

    import twisted.test
    from twisted.internet import ssl

    pem = (Path(twisted.test.__file__).parent / "server.pem").read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


def _stats(reactor: object) -> dict[str, int]:
    """
    Resident memory, open descriptors and (io_uring) operations in flight.
    """
    import os

    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    counters = getattr(reactor, "ioCounters", None)
    return {
        "rss": rss,
        "fds": len(os.listdir("/proc/self/fd")),
        "in_flight": counters()["in_flight"] if counters else -1,
    }


def runTwisted(
    name: str, app: str, port: int, tls: bool = False, unixPath: str | None = None
) -> None:
    installReactor(name)
    from twisted.internet import reactor

    if app == "mixed":
        # The soak: echo on PORT, web on the next line's port, and a line of
        # statistics every second.
        import time

        from twisted.internet.task import LoopingCall

        echo = reactor.listenTCP(  # type: ignore[attr-defined]
            0, _echoFactory(), backlog=4096, interface="127.0.0.1"
        )
        web = reactor.listenTCP(  # type: ignore[attr-defined]
            0, _webFactory(), backlog=4096, interface="127.0.0.1"
        )
        print("PORT", echo.getHost().port, flush=True)
        print("WEBPORT", web.getHost().port, flush=True)
        started = time.monotonic()

        def report() -> None:
            stats = _stats(reactor)
            stats["t"] = round(time.monotonic() - started, 1)  # type: ignore[assignment]
            print("STATS", json.dumps(stats), flush=True)

        LoopingCall(report).start(1.0)
        reactor.run()  # type: ignore[attr-defined]
        return

    if app == "udp":
        listening = _listenUDPEcho(reactor, port)
    elif app == "dns":
        listening = _listenDNS(reactor, port)
    else:
        factories = {"echo": _echoFactory, "web": _webFactory, "static": _staticFactory}
        factory = factories[app]()
        if unixPath is not None:
            listening = reactor.listenUNIX(  # type: ignore[attr-defined]
                unixPath, factory, backlog=4096
            )
        elif tls:
            listening = reactor.listenSSL(  # type: ignore[attr-defined]
                port, factory, _tlsOptions(), backlog=4096, interface="127.0.0.1"
            )
        else:
            listening = reactor.listenTCP(  # type: ignore[attr-defined]
                port, factory, backlog=4096, interface="127.0.0.1"
            )
    host = listening.getHost()
    print("PORT", getattr(host, "port", 0), flush=True)
    reactor.run()  # type: ignore[attr-defined]
    counters = getattr(reactor, "ioCounters", None)
    print(json.dumps({"counters": counters() if counters else None}), flush=True)


def runPlain(name: str, app: str, port: int) -> None:
    if app != "echo":
        raise SystemExit(f"{name} only serves the echo app")
    import asyncio

    loop: asyncio.AbstractEventLoop
    if name == "uvloop-plain":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    server: Any = loop.run_until_complete(
        loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    )
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.run_forever()
    print(json.dumps({"counters": None}), flush=True)


def _raiseFileLimit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    _raiseFileLimit()
    parser = argparse.ArgumentParser()
    parser.add_argument("reactor")
    parser.add_argument(
        "--app",
        choices=["echo", "web", "static", "udp", "dns", "mixed"],
        default="echo",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="listenSSL")
    parser.add_argument("--unix", default=None, metavar="PATH", help="listenUNIX")
    args = parser.parse_args()
    if args.reactor.endswith("-plain"):
        runPlain(args.reactor, args.app, args.port)
    else:
        runTwisted(args.reactor, args.app, args.port, args.tls, args.unix)


if __name__ == "__main__":
    main()
