"""
The ring's spin before blocking (the C{spin_wait} feature): it must deliver
every completion a blocking wait would, in each task-running mode, respect the
timeout it is given, and give up spinning on sparse traffic.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from tests.conftest import requireFeature
from uringreactor._liburing import ffi
from uringreactor.features import (
    DEFAULT_SPIN_US,
    Features,
    spinMicroseconds,
)
from uringreactor.operations import Operation
from uringreactor.ring import Ring

# The task-running modes a ring can be in, as URINGREACTOR_DISABLE values.
_MODES = {
    "defer_taskrun": "",
    "coop_taskrun": "defer_taskrun",
    "signalled": "defer_taskrun,coop_taskrun",
}


def _ring(spinMicros: int, disable: str = "") -> Ring:
    features = Features.detect(
        {"URINGREACTOR_DISABLE": disable, "URINGREACTOR_SPIN_US": str(spinMicros)}
    )
    return Ring(entries=8, features=features)


class _Receiver:
    """
    One recv on a socket pair, whose completion is recorded.
    """

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.local, self.remote = socket.socketpair()
        self.buffer = ffi.new("char[]", 64)
        self.results: list[int] = []
        op = ring.receive(
            self.local.fileno(), self.buffer, 64, Operation(self._done, None)
        )
        assert op.tag > 0

    def _done(self, res: int, flags: int) -> None:
        self.results.append(res)

    def received(self) -> bytes:
        assert len(self.results) == 1 and self.results[0] > 0, self.results
        return bytes(ffi.buffer(self.buffer, self.results[0]))

    def close(self) -> None:
        # Closing a ring twice is harmless: several receivers may share one.
        self.ring.close()
        self.local.close()
        self.remote.close()


def _sendLater(sock: socket.socket, delay: float, data: bytes) -> threading.Timer:
    timer = threading.Timer(delay, sock.send, (data,))
    timer.start()
    return timer


def test_spinBudgetFromEnvironment() -> None:
    """
    C{URINGREACTOR_SPIN_US} sets the budget; 0 switches the feature off and
    anything but a whole number in range is refused with a message naming the
    variable.
    """
    assert spinMicroseconds({}) == DEFAULT_SPIN_US
    assert spinMicroseconds({"URINGREACTOR_SPIN_US": " 120 "}) == 120
    assert "spin_wait" not in Features.detect({"URINGREACTOR_SPIN_US": "0"})
    assert "spin_wait" not in Features.detect({"URINGREACTOR_DISABLE": "spin_wait"})
    for bad in ("-1", "fast", "2.5", "1000001"):
        with pytest.raises(ValueError, match="URINGREACTOR_SPIN_US"):
            spinMicroseconds({"URINGREACTOR_SPIN_US": bad})


@pytest.mark.parametrize("mode", sorted(_MODES))
def test_spinSeesWorkArriving(mode: str) -> None:
    """
    A completion that becomes ready while the loop spins is delivered
    without blocking, whichever way the kernel runs the ring's task work:
    deferred to the loop, flagged cooperatively, or signalled.
    """
    ring = _ring(1_000_000, _MODES[mode])
    if mode != "signalled":
        requireFeature(ring.features, mode)
    assert "spin_wait" in ring.features
    receiver = _Receiver(ring)
    try:
        ring.submit()
        timer = _sendLater(receiver.remote, 0.05, b"hello")
        ring.enter(None)
        ring.dispatch()
        timer.join()
        assert receiver.received() == b"hello"
        counters = ring.counters()
        assert counters["spins"] == 1
        assert counters["spin_hits"] == 1
    finally:
        receiver.close()


def test_spinThenBlock() -> None:
    """
    When nothing comes within the budget, the wait blocks for the rest of
    its timeout and still delivers what comes later.
    """
    ring = _ring(1000)
    receiver = _Receiver(ring)
    try:
        ring.submit()
        timer = _sendLater(receiver.remote, 0.2, b"late")
        for _ in range(50):
            ring.enter(1.0)
            ring.dispatch()
            if receiver.results:
                break
        timer.join()
        assert receiver.received() == b"late"
        assert ring.counters()["spin_hits"] == 0
        assert ring.counters()["spins"] >= 1
    finally:
        receiver.close()


def test_noSpinWithinShortTimeout() -> None:
    """
    A timeout shorter than the budget is a plain timed wait: the spin must
    not outlast the reactor's next timed call.
    """
    ring = _ring(1_000_000)
    try:
        ring.enter(0.01)
        assert ring.counters()["spins"] == 0
    finally:
        ring.close()


def test_noSpinWhenSubmitting() -> None:
    """
    An iteration that submits work is busy moving data: it submits and waits
    in one enter instead of spinning, which would split its batches.
    """
    ring = _ring(1_000_000)
    receiver = _Receiver(ring)
    try:
        receiver.remote.send(b"ready")
        ring.enter(None)
        ring.dispatch()
        assert receiver.received() == b"ready"
        assert ring.counters()["spins"] == 0
    finally:
        receiver.close()


def test_noSpinAfterLargeBatch() -> None:
    """
    A loop that has just handled more than a few completions is moving
    data, not waiting for the next request: its next wait does not spin.
    """
    ring = _ring(1000)
    receivers = [_Receiver(ring) for _ in range(6)]
    try:
        for receiver in receivers:
            receiver.remote.send(b"data")
        # The data is there already: every receive completes as it is
        # submitted, and one dispatch handles all six.
        ring.enter(0)
        ring.dispatch()
        assert all(r.received() == b"data" for r in receivers)
        spins = ring.counters()["spins"]
        ring.enter(0.05)
        assert ring.counters()["spins"] == spins
        ring.enter(0.05)
        assert ring.counters()["spins"] == spins + 1
    finally:
        for receiver in receivers:
            receiver.close()


def _budget(ring: Ring) -> int:
    ptr: Any = ring._ptr
    return int(ptr.spin_ns)


def test_budgetAdaptsToTraffic() -> None:
    """
    Waits that spin in vain and then sleep past the budget halve it down to
    nothing; an event that comes soon after a wait begins grows it back.
    """
    ring = _ring(200)
    receiver = _Receiver(ring)
    try:
        ring.submit()
        assert _budget(ring) == 200_000
        for expected in (100_000, 50_000, 25_000, 0, 0):
            ring.enter(0.002)
            assert _budget(ring) == expected
        # No spin now: the next event comes straight to a blocking wait,
        # and soon enough after it began that spinning would have caught it.
        receiver.remote.send(b"x")
        ring.enter(None)
        assert _budget(ring) == 25_000
        ring.dispatch()
        assert receiver.received() == b"x"
    finally:
        receiver.close()
