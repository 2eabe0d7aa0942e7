"""
Load: 10,000 concurrent connections echoing verified data, 100,000
connect/close cycles without leaks, and 1 GB written to a peer that stops
reading, with bounded memory.  The native clients from bench/ are compiled
for the purpose and driven through spawnProcess, so the reactor serves them
while they run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import interfaces
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from zope.interface import implementer

from tests.conftest import run, scaled, sleep
from tests.test_lifetime import openSockets
from uringreactor.reactor import IOUringReactor

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the load clients")
    out = tmp_path_factory.mktemp("tools")
    built = {}
    for name, extra in (("loadgen", []), ("churn", ["-pthread"])):
        binary = out / name
        subprocess.run(
            [cc, "-O2", "-o", str(binary), str(BENCH / f"{name}.c"), *extra],
            check=True,
        )
        built[name] = str(binary)
    return built


class Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


def spawn(reactor: Any, argv: list[str]) -> Collect:
    proto = Collect()
    reactor.spawnProcess(proto, argv[0], argv, env=os.environ)
    return proto


class CountingEcho(Protocol):
    def connectionMade(self) -> None:
        self.factory.current += 1
        self.factory.peak = max(self.factory.peak, self.factory.current)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.factory.current -= 1


class CountingFactory(Factory):
    protocol = CountingEcho

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def manyFiles() -> Any:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 10,500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_tenThousandConcurrentConnections(
    uring: IOUringReactor, tools: dict[str, str], manyFiles: None
) -> None:
    """
    One reactor holds 10,000 connections at once, each echoing a stream of
    messages that the client verifies byte by byte.
    """
    factory = CountingFactory()
    connections = scaled("concurrent connections", 10000)

    @inlineCallbacks
    def work() -> Any:
        port = uring.listenTCP(0, factory, interface="127.0.0.1", backlog=4096)
        proto = spawn(
            uring,
            [
                tools["loadgen"],
                "127.0.0.1",
                str(port.getHost().port),
                str(connections),
                "64",
                "1",
                "1",
                "3",
                str(os.getpid()),
            ],
        )
        code = yield proto.ended
        while factory.current:
            yield sleep(uring, 0.01)
        yield port.stopListening()
        return code, proto

    code, proto = run(uring, work, timeout=180)
    assert code == 0, proto.err
    result = json.loads(proto.out)
    assert result["errors"] == 0
    assert result["verify_failures"] == 0
    assert result["total_requests"] >= connections
    assert factory.peak == connections


def test_hundredThousandConnectCloseCycles(
    uring: IOUringReactor, tools: dict[str, str]
) -> None:
    """
    100,000 connect/echo/close cycles (half of them ended by a reset) leave
    the server's sockets, in-flight operations and memory where they were
    after a warm-up.
    """
    factory = CountingFactory()
    cycles = scaled("connect/close cycles", 100_000)

    @inlineCallbacks
    def work() -> Any:
        port = uring.listenTCP(0, factory, interface="127.0.0.1", backlog=4096)

        def churn(cycles: int) -> Collect:
            return spawn(
                uring,
                [
                    tools["churn"],
                    "127.0.0.1",
                    str(port.getHost().port),
                    str(cycles),
                    "64",
                    "8",
                ],
            )

        warm = churn(scaled("warm-up cycles", 5000))
        code = yield warm.ended
        assert code == 0, warm.err
        while factory.current:
            yield sleep(uring, 0.01)
        before = (openSockets(), uring.ioCounters()["in_flight"], rss())
        main = churn(cycles)
        code = yield main.ended
        while factory.current:
            yield sleep(uring, 0.01)
        yield sleep(uring, 0.05)
        after = (openSockets(), uring.ioCounters()["in_flight"], rss())
        yield port.stopListening()
        return code, main, before, after

    code, main, before, after = run(uring, work, timeout=300)
    assert code == 0, main.err
    result = json.loads(main.out)
    assert result["cycles"] == cycles and result["failures"] == 0
    assert after[0] == before[0], "sockets leaked"
    assert after[1] == before[1], "in-flight operations leaked"
    assert after[2] - before[2] < 16 << 20, "memory grew"


@implementer(interfaces.IPushProducer)
class Gigabyte:
    """
    Writes 1 GB (a 1 MiB block, 1024 times) as a streaming producer.
    """

    def __init__(self, transport: Any, block: bytes, count: int) -> None:
        self.transport = transport
        self.block = block
        self.left = count
        self.paused = False
        self.pauses = 0
        self.peakBuffered = 0

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left:
            self.left -= 1
            self.transport.write(self.block)
            t = self.transport
            sender = t._sender
            buffered = t._tempDataLen + (sender.pending if sender else 0)
            self.peakBuffered = max(self.peakBuffered, buffered)
        if not self.left:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.left = 0


def test_gigabyteToAPeerThatStopsReading(uring: IOUringReactor) -> None:
    """
    A server writes 1 GB to a peer that stops reading for a while: its
    streaming producer is paused, the bytes waiting in user space stay
    bounded (and so does the process's memory), and once the peer reads
    again every byte arrives, verified by hash.
    """
    # Not os.urandom: under PyPy a getrandom() interrupted by io_uring's
    # task-work notification returns short, and a block shorter than 1 MiB
    # would make the byte count below fail with nothing lost.
    block = random.Random(1024).randbytes(1 << 20)
    # A stall of a second pauses the producer; the count only sets how much
    # follows it.
    count = scaled("MiB to a stalled peer", 1024, minimum=128)
    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(block)
    producers: list[Gigabyte] = []

    class Sender(Protocol):
        def connectionMade(self) -> None:
            p = Gigabyte(self.transport, block, count)
            producers.append(p)
            self.transport.registerProducer(p, True)
            p.resumeProducing()

    got: dict[str, Any] = {"bytes": 0, "hash": hashlib.sha256()}
    reading = threading.Event()

    def reader(port: int) -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        reading.wait()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got["hash"].update(view[:n])
            got["bytes"] += n
        s.close()

    @inlineCallbacks
    def work() -> Any:
        port = uring.listenTCP(0, Factory.forProtocol(Sender), interface="127.0.0.1")
        rssBefore = rss()
        thread = threading.Thread(target=reader, args=(port.getHost().port,))
        thread.start()
        yield sleep(uring, 1.0)
        stalled = producers[0].pauses, producers[0].left, rss()
        reading.set()
        while thread.is_alive():
            yield sleep(uring, 0.05)
        yield port.stopListening()
        return rssBefore, stalled, rss()

    rssBefore, (pauses, leftWhileStalled, rssStalled), rssAfter = run(
        uring, work, timeout=300
    )
    producer = producers[0]
    assert pauses >= 1
    assert leftWhileStalled > count - 64, "the producer was not stopped"
    assert producer.peakBuffered < 4 << 20
    assert rssStalled - rssBefore < 64 << 20
    assert got["bytes"] == count << 20
    assert got["hash"].hexdigest() == expected.hexdigest()
