"""
Child processes: their output pipes are read by io_uring read operations,
whole and in order, paused without loss, and ended as on epoll; into the
reactor's provided buffers where the kernel has them (a quiet pipe then
holds no memory), otherwise into buffers of their own.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol

from tests.conftest import _release, refcounted, requireFeature, run, sleep
from tests.test_faults import _echoCheck
from uringreactor import process
from uringreactor.features import Features
from uringreactor.reactor import IOUringReactor


@pytest.fixture(params=["provided", "own"])
def uring(request: pytest.FixtureRequest) -> Iterator[IOUringReactor]:
    """
    An io_uring reactor whose pipe reads land in its provided buffers, or
    (C{own}, as on kernels without them) in buffers of their own.
    """
    if request.param == "provided":
        reactor = IOUringReactor()
    else:
        reactor = IOUringReactor(
            Features.detect(environ={"URINGREACTOR_DISABLE": "buf_ring"})
        )
    try:
        if request.param == "provided":
            requireFeature(reactor._ring.features, "multishot_recv")
        yield reactor
    finally:
        _release(reactor)


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


# A child that says it is ready, then waits for its stdin to close.
_QUIET_CHILD = """
import sys
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


async def _quietChild(reactor: Any, collect: Collect) -> Any:
    """
    Spawn a child that writes one line and then waits for its stdin to
    close; return its process transport once the line has arrived.
    """
    ready: Deferred[None] = Deferred()
    outReceived = collect.outReceived

    def firstOutput(data: bytes) -> None:
        outReceived(data)
        if not ready.called:
            ready.callback(None)

    collect.outReceived = firstOutput  # type: ignore[method-assign]
    child = reactor.spawnProcess(
        collect, sys.executable, [sys.executable, "-c", _QUIET_CHILD], env=None
    )
    await ready
    return child


def test_quietPipesHoldNoBuffer() -> None:
    """
    A quiet child's pipes each have a read in flight, but the kernel gives
    such a read a provided buffer only when data arrives: with just two
    provided buffers in the reactor, both pipes of a child that writes
    nothing still leave them to TCP, whose echo goes through while the
    child waits.  (A read that held its buffer while waiting would leave
    the receives none, and the echo would never come.)  The child's output
    arrives, and it ends, once its stdin is closed.
    """
    reactor = IOUringReactor(bufferCount=2, bufferSize=1024, buffersAtStart=2)
    try:
        requireFeature(reactor._ring.features, "multishot_recv")
        collect = Collect(reactor)

        async def work() -> Any:
            child = await _quietChild(reactor, collect)
            # The reads after "ready" reach the kernel and wait there.
            await sleep(reactor, 0.1)
            armed = [child.pipes[fd]._readOp is not None for fd in (1, 2)]
            port = reactor.listenTCP(
                0, Factory.forProtocol(_Echo), interface="127.0.0.1"
            )
            echoes = [
                await _echoCheck(reactor, port.getHost().port, b"echo %d" % i)
                for i in range(3)
            ]
            await port.stopListening()
            child.closeStdin()
            return armed, echoes, await collect.ended

        armed, echoes, ended = run(reactor, work, timeout=30)
    finally:
        _release(reactor)
    assert armed == [True, True]
    assert echoes == [b"echo 0", b"echo 1", b"echo 2"]
    assert isinstance(ended, error.ProcessDone)
    assert b"".join(collect.out) == b"ready\n"


def test_quietPipesCostNothingWhileQuiet(uring: IOUringReactor) -> None:
    """
    A read on a pipe with nothing to read waits in the kernel: while a
    child stays quiet its pipes bring no completions and cost the loop no
    iterations.  (A kernel that answered such a read at once with EAGAIN,
    as io_uring may for a file opened non-blocking, would have the reader
    read again every iteration: a busy loop thousands of completions
    long.)
    """
    collect = Collect(uring)

    async def work() -> Any:
        child = await _quietChild(uring, collect)
        await sleep(uring, 0.05)
        before = uring.ioCounters()
        await sleep(uring, 0.5)
        after = uring.ioCounters()
        armed = [child.pipes[fd]._readOp is not None for fd in (1, 2)]
        child.closeStdin()
        await collect.ended
        return armed, {k: after[k] - before[k] for k in ("cqes", "enters")}

    armed, spent = run(uring, work, timeout=30)
    assert armed == [True, True]
    assert spent["cqes"] == 0, spent
    # Only timers wake the loop: the sleep's, and (the tests run the
    # reactor without signal handlers, so without SIGCHLD) Twisted's reaper,
    # which polls for ended children 20 times a second.
    assert spent["enters"] <= 25, spent


@refcounted
@pytest.mark.parametrize("pauseEvery", [0, 1])
def test_endedChildIsFreedWithoutTheCollector(
    uring: IOUringReactor, pauseEvery: int
) -> None:
    """
    Once a child has ended, nothing of the reactor's keeps its process
    object alive, and no reference cycle of the reactor's does either: its
    operations (the polls of its stdin, the reads of its output, reads
    cancelled by pausing) are freed as they complete, and the process with
    them, without the garbage collector, as on epoll.
    """
    collect = Collect(uring, pauseEvery)
    gc.collect()
    gc.disable()
    try:

        async def work() -> Any:
            child = uring.spawnProcess(
                collect,
                sys.executable,
                [sys.executable, "-c", _CHILD, "20000"],
                env=None,
            )
            collect.transport = child
            await collect.ended
            # Let a resumeProducing scheduled by the last pause run.
            await sleep(uring, 0.05)
            return weakref.ref(child)

        ref = run(uring, work, timeout=60)
        assert b"".join(collect.out) == _expected(20000)
        assert pauseEvery == 0 or collect.pauses > 0
        # The test's protocol is the last to hold the process.
        collect.transport = None
        assert ref() is None
    finally:
        gc.enable()
