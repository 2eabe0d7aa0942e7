"""
The provided receive buffers of a ring: one buffer group that receive
operations take a buffer from when data arrives.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uringreactor.ring import Ring

# The buffers themselves: the CPython extension, which hands long reads
# over without a copy, or under PyPy the cffi path, which copies every read
# (see uringreactor.cffibuffers for why).
if platform.python_implementation() == "CPython":
    from uringreactor._buffers import HANDS_OVER, Buffers
else:
    from uringreactor.cffibuffers import (  # type: ignore[assignment]
        HANDS_OVER,
        Buffers,
    )

__all__ = ["HANDOVER", "HANDS_OVER", "BufferRing", "Buffers"]

# Receives of at least this many bytes hand their provided buffer over as
# the bytes object the protocol gets instead of copying out of it.  Shorter
# ones are copied: a copy of a few KiB costs about what allocating the
# replacement buffer does, and leaves no buffer-sized block split in the
# heap.  (With 4 KiB messages, thresholds of 1, 8 and 32 KiB measured alike.)
HANDOVER = 8192


class BufferRing:
    """
    A ring of provided buffers registered with the kernel under one buffer
    group: receive operations select a buffer when data arrives, so a
    connection with nothing to read holds no memory.

    Buffers go into circulation as the kernel needs them: C{circulating} (at
    least one) at first, twice as many each time a receive finds none free
    (L{shortage}), up to C{count}.  The kernel takes buffers in the order
    they were given back, so each one in circulation is written once per
    lap; a set no larger than the reads in flight need stays in the CPU's
    caches, where sweeping all of them would make every large read miss.

    On CPython long reads are not copied (L{uringreactor._buffers}): a
    buffer that receives one becomes a bytes object, and the next long read
    into it is handed to the protocol as that very object, a fresh one
    taking its place.  Short reads, and under PyPy every read, are copied
    out.

    @ivar bufferSize: the size of each buffer.
    @ivar count: how many buffers there can be.
    @ivar take: C{take(bufferId, length) -> bytes}, the first C{length}
        bytes of buffer C{bufferId}, which a completion has just filled; the
        buffer (or its replacement) goes back to the kernel.
    @ivar view: C{view(bufferId, length)}, those bytes in place (a
        memoryview; under PyPy a copy), to parse before giving the buffer
        back with C{recycle}.
    @ivar recycle: C{recycle(bufferId)}, give a buffer back unread.

    (The last three are the C methods themselves, bound once: one call each
    on the receive path.)
    """

    def __init__(
        self,
        ring: Ring,
        count: int,
        bufferSize: int,
        groupId: int,
        circulating: int,
    ):
        self._ring = ring
        try:
            self._buffers = Buffers(ring.fileno, groupId, count, bufferSize, HANDOVER)
        except OSError as e:
            raise OSError(e.errno, f"provided buffer ring: {e.strerror}") from None
        # Adopted before the first buffer circulates: from here on the
        # ring's release unregisters them, closes the io_uring, then frees
        # them.
        ring.adoptBuffers(self._buffers)
        self._buffers.grow(min(circulating, count))
        self.groupId = groupId
        self.bufferSize = bufferSize
        self.count = count
        self._grownAt = -1
        self.take = self._buffers.take
        self.view = self._buffers.view
        self.recycle = self._buffers.recycle

    @property
    def circulating(self) -> int:
        """
        How many buffers the kernel may fill.
        """
        return self._buffers.circulating

    def shortage(self) -> None:
        """
        A receive found no buffer: double the buffers in circulation, once
        per event-loop iteration however many receives ran short in it.
        """
        enters = self._ring.enters
        if enters != self._grownAt:
            self._grownAt = enters
            self._buffers.grow(self._buffers.circulating)
