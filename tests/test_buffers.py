"""
The provided buffers (L{uringreactor._buffers} on CPython,
L{uringreactor.cffibuffers} on PyPy): what goes into the ring's entries,
which reads are copied and which handed over as bytes objects without a
copy, and that a handed-over object is never written into again.

The unit tests drive L{Buffers} mapped but not registered with an io_uring,
and play the kernel's part by hand: read an entry, write into the memory
it points to, report the buffer id.  The last test does the same through the
kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import socket
import struct
import sys
from typing import Any

import pytest
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol

from tests.conftest import requireFeature, run, sleep
from uringreactor import bufferring, cffibuffers
from uringreactor._liburing import ffi
from uringreactor.bufferring import HANDOVER, HANDS_OVER, Buffers
from uringreactor.reactor import IOUringReactor

# struct io_uring_buf: addr, len, bid, and (in entry 0) the ring's tail.
_ENTRY = struct.Struct("=QIHH")


# Both implementations where both exist (CPython): the one the reactor uses
# and the cffi one PyPy uses, so that CPython runs test the PyPy path too.
IMPLEMENTATIONS = list(dict.fromkeys([Buffers, cffibuffers.Buffers]))
eachImplementation = pytest.mark.parametrize(
    "implementation", IMPLEMENTATIONS, ids=lambda cls: cls.__module__
)


class FakeRing:
    """
    The kernel's side of a provided-buffer ring with C{count} entries and
    C{count} buffers of C{size} bytes, mapped by L{Buffers} and not
    registered: its entries are read the way the kernel reads them.
    """

    def __init__(self, count: int, size: int, implementation: Any = Buffers) -> None:
        self.count = count
        self.size = size
        self._buffers = implementation(-1, 0, count, size, HANDOVER)
        self.address = self._buffers.ring_address
        self.area = self._buffers.area_address
        self.view = memoryview(
            (ctypes.c_char * (_ENTRY.size * count)).from_address(self.address)
        ).cast("B")
        self.head = 0

    def buffers(self) -> Buffers:
        return self._buffers

    def inArea(self, address: int) -> bool:
        return self.area <= address < self.area + self.count * self.size

    def tail(self) -> int:
        return _ENTRY.unpack_from(self.view, 0)[3]

    def select(self) -> tuple[int, int, int]:
        """
        Take the next buffer the way a receive does: C{(address, length,
        bufferId)}.
        """
        assert self.head != self.tail(), "no buffer in the ring"
        addr, length, bid, _ = _ENTRY.unpack_from(
            self.view, _ENTRY.size * (self.head % self.count)
        )
        self.head += 1
        return addr, length, bid

    def receive(self, data: bytes) -> tuple[int, int]:
        """
        Fill the next buffer with C{data}: C{(bufferId, address)}.
        """
        addr, length, bid = self.select()
        assert len(data) <= length
        ctypes.memmove(addr, data, len(data))
        return bid, addr


def storage(data: bytes) -> int:
    """
    The address of a bytes object's contents.
    """
    return int(ffi.cast("uintptr_t", ffi.from_buffer(data)))


@eachImplementation
def test_growFillsEntriesUpToTheRingSize(implementation: Any) -> None:
    """
    Buffers join the ring's entries as they are grown, each with its id and
    full size and its place in the area, never more than the ring holds.
    """
    ring = FakeRing(8, 4096, implementation)
    buffers = ring.buffers()
    assert buffers.circulating == 0
    assert buffers.grow(3) == 3
    assert ring.tail() == 3
    assert buffers.grow(100) == 8
    assert ring.tail() == 8
    seen = [ring.select() for _ in range(8)]
    assert seen == [(ring.area + bid * 4096, 4096, bid) for bid in range(8)]
    buffers.release()


@eachImplementation
def test_shortReadsStayInTheArea(implementation: Any) -> None:
    """
    Reads below the hand-over size are copied out, and the same buffer, in
    the area, goes straight back into the ring: no allocation.
    """
    ring = FakeRing(4, 65536, implementation)
    buffers = ring.buffers()
    buffers.grow(1)
    for size in (5, 100, HANDOVER - 1):
        payload = os.urandom(size)
        bid, addr = ring.receive(payload)
        assert ring.inArea(addr)
        data = buffers.take(bid, size)
        assert data == payload
        assert storage(data) != addr
        assert ring.select() == (addr, 65536, bid)
        ring.head -= 1
    buffers.release()


@eachImplementation
def test_viewShowsWhatWasReadUntilRecycled(implementation: Any) -> None:
    """
    A view of a buffer holds the bytes just read, for a datagram's header,
    address and payload to be sliced out of; recycling gives the buffer
    itself back, and the next read goes into it.
    """
    ring = FakeRing(4, 4096, implementation)
    buffers = ring.buffers()
    buffers.grow(1)
    payload = bytes(range(256)) * 6
    bid, addr = ring.receive(payload)
    view = buffers.view(bid, len(payload))
    assert bytes(view[:16]) == payload[:16]
    assert bytes(view[100:1500]) == payload[100:1500]
    del view
    buffers.recycle(bid)
    assert ring.select() == (addr, 4096, bid)
    buffers.release()


handsOver = pytest.mark.skipif(
    not HANDS_OVER,
    reason="PyPy copies every read out of the area: its C API emulation keeps a"
    " bytes object's contents apart from the storage C sees",
)


def test_longReadsAreCopiedWhereNothingIsHandedOver() -> None:
    """
    Through cffi (PyPy's path) long reads too are copied out of the area,
    and their buffer goes straight back: the bytes a protocol gets are what
    the kernel wrote.
    """
    ring = FakeRing(4, 65536, cffibuffers.Buffers)
    buffers = ring.buffers()
    buffers.grow(1)
    for size in (HANDOVER, 65536, 65536):
        payload = os.urandom(size)
        bid, addr = ring.receive(payload)
        assert ring.inArea(addr)
        assert buffers.take(bid, size) == payload
        assert ring.select() == (addr, 65536, bid)
        ring.head -= 1
    buffers.release()


@handsOver
def test_longReadsAreHandedOverAndReplaced() -> None:
    """
    A long read into the area is copied, and its buffer becomes a bytes
    object.  The next long read into that buffer is the bytes object itself:
    its contents are where the kernel wrote them, and a different buffer
    takes its place in the ring.
    """
    ring = FakeRing(4, 65536)
    buffers = ring.buffers()
    buffers.grow(1)
    first = os.urandom(65536)
    bid, addr = ring.receive(first)
    assert ring.inArea(addr)
    assert buffers.take(bid, 65536) == first
    payload = os.urandom(65536)
    bid, addr = ring.receive(payload)
    assert not ring.inArea(addr)
    data = buffers.take(bid, len(payload))
    assert data == payload
    assert storage(data) == addr
    replacement, length, again = ring.select()
    assert (length, again) == (65536, bid)
    assert replacement != addr and not ring.inArea(replacement)
    # The next read goes into the replacement; the first object keeps its
    # contents.
    ring.head -= 1
    other = os.urandom(65536)
    bid, _ = ring.receive(other)
    assert buffers.take(bid, len(other)) == other
    assert data == payload
    buffers.release()


@handsOver
def test_partlyFilledBufferIsShrunk() -> None:
    """
    A long read that does not fill its buffer is handed over shrunk to its
    length, a well-formed bytes object.  (glibc's realloc shrinks a block
    in place, so there is no copy; other allocators, AddressSanitizer's
    among them, may move it.)
    """
    ring = FakeRing(4, 65536)
    buffers = ring.buffers()
    buffers.grow(1)
    bid, _ = ring.receive(b"x" * HANDOVER)
    buffers.take(bid, HANDOVER)
    payload = os.urandom(HANDOVER + 123)
    bid, addr = ring.receive(payload)
    assert not ring.inArea(addr)
    data = buffers.take(bid, len(payload))
    assert len(data) == len(payload)
    assert data == payload
    assert hash(data) == hash(bytes(payload))
    assert data + b"!" == payload + b"!"
    buffers.release()


@handsOver
def test_viewedBufferIsNeverHandedOver() -> None:
    """
    While a view of a buffer is alive, a long read into it is copied: the
    view keeps seeing the buffer, and the object handed out is never one
    that is still in the ring.
    """
    ring = FakeRing(4, 65536)
    buffers = ring.buffers()
    buffers.grow(1)
    bid, _ = ring.receive(b"x" * HANDOVER)
    buffers.take(bid, HANDOVER)
    bid, addr = ring.receive(b"first")
    view = buffers.view(bid, 5)
    assert bytes(view) == b"first"
    buffers.recycle(bid)
    payload = os.urandom(HANDOVER)
    bid, again = ring.receive(payload)
    assert again == addr
    data = buffers.take(bid, len(payload))
    assert data == payload
    assert storage(data) != addr
    assert bytes(view) == payload[:5]
    view.release()
    buffers.release()


@eachImplementation
def test_badRequestsRaise(implementation: Any) -> None:
    """
    Ids not in circulation, impossible lengths, a ring of the wrong size,
    and use after release are errors, not memory corruption.
    """
    ring = FakeRing(4, 4096, implementation)
    with pytest.raises(ValueError):
        implementation(-1, 0, 3, 4096, HANDOVER)
    with pytest.raises(ValueError):
        implementation(-1, 0, 4, 0, HANDOVER)
    buffers = ring.buffers()
    buffers.grow(2)
    with pytest.raises(IndexError):
        buffers.take(2, 10)
    with pytest.raises(IndexError):
        buffers.recycle(-1)
    with pytest.raises(ValueError):
        buffers.take(0, 4097)
    with pytest.raises(ValueError):
        buffers.view(0, -1)
    buffers.release()
    with pytest.raises(ValueError):
        buffers.take(0, 10)
    with pytest.raises(ValueError):
        buffers.grow(1)


@handsOver
def test_releaseFreesTheBuffers() -> None:
    """
    Releasing drops the reference to every bytes object still in the ring;
    one handed over lives on with its owner.
    """
    ring = FakeRing(4, 65536)
    buffers = ring.buffers()
    buffers.grow(1)
    bid, _ = ring.receive(b"x" * 65536)
    buffers.take(bid, 65536)
    bid, _ = ring.receive(b"y" * 65536)
    kept = buffers.take(bid, 65536)
    view = buffers.view(0, 0)
    inRing = view.obj
    assert inRing is not None and inRing is not kept
    view.release()
    references = sys.getrefcount(inRing)
    buffers.release()
    assert sys.getrefcount(inRing) == references - 1
    assert kept == b"y" * 65536


@eachImplementation
def test_handedOverDataIsNeverOverwritten(
    implementation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Through the kernel: 64 KiB reads handed over (copied, under PyPy) to a
    protocol that keeps every one of them, mixed with short reads that are
    copied, on several connections at once.  Once all the data is in, every
    object the protocol got still holds exactly what was sent: no buffer
    handed over was written into again.
    """
    monkeypatch.setattr(bufferring, "Buffers", implementation)
    reactor = IOUringReactor(bufferCount=16, buffersAtStart=4)
    requireFeature(reactor._ring.features, "buf_ring")
    assert isinstance(reactor._driver.buffers._buffers, implementation)
    conns = 6
    chunks = [65536, 100, 65536, 9000, 1, 65536, 30000]
    total = sum(chunks) * 8

    @inlineCallbacks
    def work() -> Any:
        received: dict[int, list[bytes]] = {}
        done: Deferred[None] = Deferred()

        class Keeper(Protocol):
            def connectionMade(self) -> None:
                self.key = len(received)
                received[self.key] = []

            def dataReceived(self, data: bytes) -> None:
                received[self.key].append(data)
                if sum(sum(map(len, c)) for c in received.values()) == (total * conns):
                    done.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Keeper), interface="127.0.0.1")
        peers = [
            socket.create_connection(("127.0.0.1", port.getHost().port))
            for _ in range(conns)
        ]
        # Not os.urandom: under PyPy a getrandom() interrupted by io_uring's
        # task-work notification returns short, and PyPy does not retry.
        streams = [random.Random(i).randbytes(total) for i in range(conns)]
        yield sleep(reactor, 0.05)
        for s in peers:
            # Sent from the reactor's own thread: a blocking send that fills
            # the socket's buffers would stop the reactor that empties them.
            s.setblocking(False)
        offsets = [0] * conns
        for _ in range(8):
            for size in chunks:
                ends = [offset + size for offset in offsets]
                while offsets != ends:
                    for i, s in enumerate(peers):
                        if offsets[i] < ends[i]:
                            try:
                                offsets[i] += s.send(streams[i][offsets[i] : ends[i]])
                            except BlockingIOError:
                                pass
                    yield sleep(reactor, 0.001)
        yield done
        for s in peers:
            s.close()
        yield port.stopListening()
        return received, streams

    received, streams = run(reactor, work, timeout=60)
    byStart = {s[:32]: s for s in streams}
    longReads = 0
    for pieces in received.values():
        data = b"".join(pieces)
        assert data == byStart[data[:32]]
        longReads += sum(len(p) >= HANDOVER for p in pieces)
    # There were long reads: handed over where HANDS_OVER, else copied.
    assert longReads > 0
    reactor._ring.close()


@eachImplementation
def test_registrationFailureIsAnOSError(implementation: Any) -> None:
    """
    A descriptor that is no io_uring, or a group id already registered on
    the ring, is refused by the kernel: an C{OSError} with its errno, and
    nothing left mapped or registered.
    """
    from uringreactor.ring import Ring

    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as notRing:
            implementation(r, 0, 4, 4096, HANDOVER)
        assert notRing.value.errno is not None
    finally:
        os.close(r)
        os.close(w)
    ring = Ring(entries=8)
    try:
        requireFeature(ring.features, "buf_ring")
        first = implementation(ring.fileno, 5, 4, 4096, HANDOVER)
        with pytest.raises(OSError) as taken:
            implementation(ring.fileno, 5, 4, 4096, HANDOVER)
        assert taken.value.errno == errno.EEXIST
        first.unregister()
        # The group is free again.
        second = implementation(ring.fileno, 5, 4, 4096, HANDOVER)
        second.unregister()
        second.release()
        first.release()
    finally:
        ring.close()
