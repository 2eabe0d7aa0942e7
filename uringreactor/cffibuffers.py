"""
The provided buffers through cffi alone, for PyPy.

The same object as L{uringreactor._buffers.Buffers} (the CPython extension)
minus the hand-over: every read is copied out of the ring's area with
C{ffi.unpack}, and the buffer goes straight back.  PyPy cannot hand a
kernel-filled buffer to a protocol as a bytes object without a copy
(its bytes do not live in memory C can fill), and its emulation of the
CPython C API costs more per call than the copy; cffi calls are what its
JIT compiles best.  The ring itself (mapping, registering, filling the
entries) is c/bufring.c, which the CPython extension uses too.

Lifetime as there: the kernel may write into any buffer in circulation until
the ring is unregistered or the io_uring closed, so the memory stays until
L{Buffers.release}, which the owner calls only after that.
"""

from __future__ import annotations

import os
from typing import Any

from uringreactor._liburing import ffi, lib

# Reads are never handed over here.
HANDS_OVER = 0

_unpack = ffi.unpack
_giveBack = lib.ur_bufring_give_back
_NULL = ffi.NULL


class Buffers:
    """
    A provided-buffer ring of C{count} entries registered with the io_uring
    C{ring_fd} as buffer group C{group} (with a C{ring_fd} of -1 it is
    mapped but not registered, for tests that play the kernel's part), and
    its buffers, C{size} bytes each; none circulates until L{grow}.
    C{handover} is accepted for the extension's signature, and unused.
    """

    def __init__(
        self, ring_fd: int, group: int, count: int, size: int, handover: int
    ) -> None:
        if count <= 0 or count & (count - 1) or count > 32768:
            raise ValueError(
                "a buffer ring needs a power of two of at most 32768 entries"
            )
        if size <= 0 or size > 0xFFFFFFFF:
            raise ValueError("bad buffer size")
        if not 0 <= group <= 0xFFFF:
            raise ValueError("bad buffer group id")
        err = ffi.new("int *")
        ring = lib.ur_bufring_new(ring_fd, group, count, size, err)
        if ring == _NULL:
            raise OSError(err[0], os.strerror(err[0]))
        self._ring: Any = ring
        self._registered = ring_fd >= 0
        self._area = ring.area
        self._size = size

    def _live(self) -> Any:
        if self._ring is None:
            raise ValueError("the buffers have been released")
        return self._ring

    def _check(self, bid: int) -> Any:
        ring = self._live()
        if not 0 <= bid < ring.circulating:
            raise IndexError(f"no buffer {bid} in circulation")
        return ring

    @property
    def circulating(self) -> int:
        """
        How many buffers the kernel may fill.
        """
        return int(self._live().circulating)

    @property
    def ring_address(self) -> int:
        """
        Where the ring's entries are (for tests that play the kernel).
        """
        return int(ffi.cast("uintptr_t", lib.ur_bufring_entries(self._live())))

    @property
    def area_address(self) -> int:
        """
        Where the area the buffers are in is.
        """
        return int(ffi.cast("uintptr_t", self._area))

    def grow(self, more: int) -> int:
        """
        Put up to C{more} new buffers in circulation (never more than the
        ring holds); return how many circulate now.
        """
        ring = self._live()
        more = max(0, min(more, ring.count))
        return int(lib.ur_bufring_grow(ring, more))

    def take(self, bid: int, length: int) -> bytes:
        """
        The first C{length} bytes of buffer C{bid}, which a completion has
        just filled, copied; the buffer goes back to the kernel.
        """
        ring = self._check(bid)
        if not 0 <= length <= self._size:
            raise ValueError(f"bad length {length}")
        data: bytes = _unpack(self._area + bid * self._size, length)
        _giveBack(ring, bid, _NULL)
        return data

    def view(self, bid: int, length: int) -> bytes:
        """
        The first C{length} bytes of buffer C{bid}, for parsing; give the
        buffer back with L{recycle}.  A copy, unlike the extension's view
        in place: PyPy slices a memoryview of cffi memory a byte at a time
        (50 us to take 1,400 bytes out of one, against 0.1 us to copy them
        all and slice the copy).
        """
        self._check(bid)
        if not 0 <= length <= self._size:
            raise ValueError(f"bad length {length}")
        return _unpack(self._area + bid * self._size, length)  # type: ignore[no-any-return]

    def recycle(self, bid: int) -> None:
        """
        Give buffer C{bid} back to the kernel as it is.
        """
        _giveBack(self._check(bid), bid, _NULL)

    def unregister(self) -> None:
        """
        Unregister the ring from its io_uring: the kernel takes no buffer
        from it any more.  Then L{release} may free them.
        """
        if self._ring is None or not self._registered:
            return
        self._registered = False
        rc = lib.ur_bufring_unregister(self._ring)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def release(self) -> None:
        """
        Free every buffer and the ring's memory.  Only once the kernel can
        no longer write into them: after L{unregister} or the io_uring's
        close.
        """
        ring, self._ring = self._ring, None
        if ring is not None:
            self._registered = False
            lib.ur_bufring_free(ring)
