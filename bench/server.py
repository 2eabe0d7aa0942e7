"""
Benchmark servers, on a reactor chosen by name.

    python bench/server.py REACTOR [--app echo|web] [--port N]

REACTOR is one of: iouring, iouring-nospin (without the spin before
blocking, URINGREACTOR_SPIN_US=0), epoll, poll, asyncio (Twisted on asyncio),
uvloop (Twisted on asyncio with uvloop), asyncio-plain and uvloop-plain (an
asyncio server without Twisted, as a reference; echo only).

The C{echo} app echoes every byte back.  The C{web} app is twisted.web
serving a 13-byte "Hello, world!" with keep-alive, its access log turned off
(the same on every reactor).

Prints C{PORT n} once listening, runs until SIGTERM, then prints one JSON
line of counters (io_uring reactor only).
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any


def _installTwisted(name: str) -> None:
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


def runTwisted(name: str, app: str, port: int) -> None:
    _installTwisted(name)
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

    factory = _echoFactory() if app == "echo" else _webFactory()
    listening = reactor.listenTCP(  # type: ignore[attr-defined]
        port, factory, backlog=4096, interface="127.0.0.1"
    )
    print("PORT", listening.getHost().port, flush=True)
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
    parser.add_argument("--app", choices=["echo", "web", "mixed"], default="echo")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.reactor.endswith("-plain"):
        runPlain(args.reactor, args.app, args.port)
    else:
        runTwisted(args.reactor, args.app, args.port)


if __name__ == "__main__":
    main()
