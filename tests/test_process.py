"""
Child processes: their output pipes are read by io_uring read operations,
whole and in order, paused without loss, and ended as on epoll.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.conftest import run
from uringreactor import process
from uringreactor.reactor import IOUringReactor

# A child that writes COUNT numbered lines to stdout and a line to stderr.
_CHILD = """
import sys
count = int(sys.argv[1])
# One write: the pipe then fills whole while the reader catches up.
sys.stdout.buffer.write(b"".join(b"%08d\\n" % i for i in range(count)))
sys.stdout.flush()
sys.stderr.write("done\\n")
"""


class Collect(ProcessProtocol):
    """
    Gathers a child's output; with C{pauseEvery}, pauses reading after
    every that many deliveries and resumes shortly after.
    """

    def __init__(self, reactor: Any, pauseEvery: int = 0) -> None:
        self.reactor = reactor
        self.pauseEvery = pauseEvery
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.pauses = 0
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)
        if self.pauseEvery and len(self.out) % self.pauseEvery == 0:
            self.pauses += 1
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.reactor.callLater(0.01, self.transport.resumeProducing)  # type: ignore[union-attr]

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def _spawn(uring: IOUringReactor, collect: Collect, count: int) -> Any:
    def work() -> Any:
        transport = uring.spawnProcess(
            collect,
            sys.executable,
            [sys.executable, "-c", _CHILD, str(count)],
            env=None,
        )
        collect.transport = transport
        return collect.ended

    return run(uring, work, timeout=60)


def _expected(count: int) -> bytes:
    return b"".join(b"%08d\n" % i for i in range(count))


def test_outputArrivesWholeInLargeReads(uring: IOUringReactor) -> None:
    """
    A child's output pipes are io_uring readers, not polled descriptors:
    4 MiB of stdout arrive whole and in order, each delivery up to a pipe
    buffer (64 KiB) long rather than epoll's 8 KiB reads, stderr too, and
    the process ends normally once both pipes are at end of file.
    """
    collect = Collect(uring)
    count = 4 * 1024 * 1024 // 9
    readers: list[Any] = []
    original = process.ProcessReader.startReading

    def startReading(self: Any) -> None:
        readers.append(self)
        original(self)

    process.ProcessReader.startReading = startReading  # type: ignore[method-assign]
    try:
        ended = _spawn(uring, collect, count)
    finally:
        process.ProcessReader.startReading = original  # type: ignore[method-assign]
    assert isinstance(ended, error.ProcessDone)
    assert b"".join(collect.out) == _expected(count)
    assert b"".join(collect.err) == b"done\n"
    assert {r.name for r in readers} == {1, 2}
    assert not any(r in uring._reads for r in readers)
    assert max(len(chunk) for chunk in collect.out) > 8192


def test_pausedOutputLosesNothing(uring: IOUringReactor) -> None:
    """
    Pausing a process's output (C{pauseProducing}) cancels the read in
    flight; what it read anyway is held and delivered first when reading
    resumes, so the output still arrives whole and in order.
    """
    collect = Collect(uring, pauseEvery=3)
    count = 1024 * 1024 // 9
    ended = _spawn(uring, collect, count)
    assert isinstance(ended, error.ProcessDone)
    assert collect.pauses > 3
    assert b"".join(collect.out) == _expected(count)
