"""
Shared helpers: fresh reactors per test, running them until a Deferred
fires, and counting open file descriptors.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import process, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure

from uringreactor.reactor import IOUringReactor

# For tests of what is freed the moment it is dropped, without the garbage
# collector: only where objects are reference counted.
refcounted = pytest.mark.skipif(
    platform.python_implementation() != "CPython",
    reason="no reference counting here (PyPy): every object is freed by the "
    "garbage collector, so nothing is freed without it",
)

REACTORS: dict[str, Callable[[], Any]] = {
    "epoll": EPollReactor,
    "iouring": IOUringReactor,
}


class ReactorTimeout(Exception):
    pass


SCALE_ENV = "URINGREACTOR_TEST_SCALE"
_scaled: list[str] = []


def scaled(what: str, count: int, minimum: int = 1) -> int:
    """
    A load test's count, multiplied by C{URINGREACTOR_TEST_SCALE} (default
    1): the kernel matrix runs its guests under CPU emulation, about ten
    times slower than the host, and scales the load tests down with it.
    Every scaled count is listed at the end of the test run.

    @param what: what is counted, for that list.
    """
    factor = float(os.environ.get(SCALE_ENV, "1") or 1)
    if factor == 1:
        return count
    result = max(minimum, int(count * factor))
    _scaled.append(f"{what}: {count} -> {result}")
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _scaled:
        factor = os.environ.get(SCALE_ENV)
        terminalreporter.section(f"load tests scaled by {SCALE_ENV}={factor}")
        for line in _scaled:
            terminalreporter.write_line(line)


def run(reactor: Any, work: Any, timeout: float = 60.0) -> Any:
    """
    Run C{reactor} until C{work} (a Deferred, a coroutine, or a callable
    returning either, called once the reactor runs) has a result; return it,
    or raise its failure.  Fails with L{ReactorTimeout} after C{timeout}.
    """
    outcome: list[Any] = []

    def finish(result: Any) -> None:
        if not outcome:
            outcome.append(result)
        if reactor.running:
            reactor.stop()

    def start() -> None:
        try:
            d = work() if callable(work) else work
            if not isinstance(d, Deferred):
                d = ensureDeferred(d)
        except BaseException:
            finish(Failure())
            return
        d.addBoth(finish)

    def expire() -> None:
        finish(Failure(ReactorTimeout(f"reactor still running after {timeout}s")))

    reactor.callWhenRunning(start)
    timer = reactor.callLater(timeout, expire)
    # The reactor runs without its signal handlers (pytest owns the
    # process's signals), so no SIGCHLD tells it to reap a child process
    # that exits after closing its pipes, and that child's processEnded
    # would never come: reap on a timer instead.
    reaper = task.LoopingCall(process.reapAllProcesses)
    reaper.clock = reactor
    reaper.start(0.05, now=False)
    reactor.run(installSignalHandlers=False)
    if reaper.running:
        reaper.stop()
    if timer.active():
        timer.cancel()
    assert outcome, "reactor stopped without a result"
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def requireFeature(features: Any, name: str) -> None:
    """
    Skip the test unless the io_uring feature C{name} is in use in
    C{features} (a reactor's or ring's L{uringreactor.features.Features}),
    saying why it is not: what the kernel answered to its probe and the
    first kernel that has it, or that the environment disabled it.
    """
    if name not in features:
        pytest.skip(f"needs {name}, not in use here: {features.why[name]}")


def openFds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _release(reactor: Any) -> None:
    """
    Give a test's io_uring ring back now rather than when the garbage
    collector finds the reactor: without CAP_IPC_LOCK (as in a container),
    rings count against the user's locked-memory limit, which every process
    of the user shares.
    """
    if isinstance(reactor, IOUringReactor):
        reactor._ring.close()


@pytest.fixture(params=sorted(REACTORS))
def anyReactor(request: pytest.FixtureRequest) -> Iterator[Any]:
    """
    A new reactor of each kind, so behaviour can be compared with epoll.
    """
    reactor = REACTORS[request.param]()
    yield reactor
    _release(reactor)


@pytest.fixture
def uring() -> Iterator[IOUringReactor]:
    """
    A new io_uring reactor.
    """
    reactor = IOUringReactor()
    yield reactor
    _release(reactor)
