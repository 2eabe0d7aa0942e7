"""
Child processes whose output pipes are read by io_uring.

Spawning, the child's descriptors, its writers (stdin), reaping and
C{processEnded} are Twisted's own L{twisted.internet.process.Process}.
What changes is how a child's stdout and stderr (and any other pipe it
writes) are read: on epoll, each readiness costs a wake-up and an 8 KiB
C{read}, so a child writing a lot costs a loop iteration per 8 KiB.  Here
each pipe has one read operation in flight, of up to 64 KiB (a whole pipe
buffer): its completion carries the data itself, and the next read goes
to the kernel with the loop's next C{io_uring_enter}.

The read lands in one of the reactor's provided buffers (those TCP
receives use), which the kernel takes only when data arrives: a quiet
child's pipes hold no memory, as on epoll, however many children there
are.  Where the kernel has no provided buffers (before 5.19) each read has
a buffer of its own, which belongs to its operation until the operation's
last completion.  A read cancelled (the protocol paused reading, or the
pipe is closing) that completed anyway has what it brought held and
delivered when reading resumes, so pausing loses nothing.  End of file and
read errors end the pipe as on epoll (C{CONNECTION_DONE},
C{CONNECTION_LOST}).
"""

from __future__ import annotations

import errno
from functools import partial
from typing import Any

from twisted.internet import process
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from uringreactor._liburing import ffi
from uringreactor.operations import BUFFER_SHIFT, F_BUFFER, Operation

# Bytes one read asks for: the default capacity of a Linux pipe.
READ_SIZE = 65536

# What a read reports when it should simply be made again.
_READ_AGAIN = frozenset({-errno.EAGAIN, -errno.EINTR})
_ENOBUFS = -errno.ENOBUFS

_unpack = ffi.unpack


class ProcessReader(process.ProcessReader):
    """
    A child's output pipe, read by io_uring read operations.
    """

    _uringHandle = True
    _reading = False
    _writing = False
    _flushQueued = False
    _registered = False
    # The read in flight, the buffer of the last one to complete (for the
    # next, where reads have buffers of their own), and what a cancelled
    # read brought while reading was paused.
    _readOp: Operation | None = None
    _spare: Any = None
    _held: bytes = b""

    def startReading(self) -> None:
        if self._reading:
            return
        self._reading = True
        driver = self.reactor._driver
        if not self._registered:
            self._registered = True
            driver.register(self)
        if self._held:
            # What a cancelled read brought goes first: the next read is
            # made once it is delivered (not from inside startReading,
            # which a protocol's resumeProducing calls).
            held, self._held = self._held, b""
            driver.callLater(0, self._deliverHeld, held)
        elif self._readOp is None:
            self._armRead()

    def stopReading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        op = self._readOp
        if op is not None:
            self._readOp = None
            # The late handler is given the read's memory, not the read:
            # the read holds its handler, which would then hold it back.
            self.reactor._driver.ring.cancel(
                op, late=partial(self._lateRead, op.memory)
            )

    # reactor.removeReader(reader)
    _removedAsReader = stopReading

    def startWriting(self) -> None:
        # A reader never writes (FileDescriptor's writing machinery would
        # only come back to the reactor here).
        pass

    def stopWriting(self) -> None:
        pass

    def _flush(self) -> bool:
        return False

    def _armRead(self) -> None:
        driver = self.reactor._driver
        buffers = driver.buffers
        if buffers is not None:
            op = Operation(self._read, None)
            self._readOp = driver.ring.readSelect(
                self.fd, buffers.groupId, min(READ_SIZE, buffers.bufferSize), op
            )
            return
        buffer, self._spare = self._spare, None
        if buffer is None:
            buffer = ffi.new("char[]", READ_SIZE)
        op = Operation(self._read, buffer)
        self._readOp = driver.ring.read(self.fd, buffer, READ_SIZE, op)

    def _data(self, memory: Any, res: int, flags: int) -> bytes:
        """
        The C{res} bytes a read brought, out of the provided buffer it
        names in C{flags} (which goes back to the kernel) or its own,
        C{memory}.
        """
        if flags & F_BUFFER:
            buffers = self.reactor._driver.buffers
            return buffers.take(flags >> BUFFER_SHIFT, res)  # type: ignore[no-any-return]
        # The kernel is done with the read's own buffer: the next read
        # takes it.
        self._spare = memory
        return _unpack(memory, res)  # type: ignore[no-any-return]

    def _read(self, res: int, flags: int) -> None:
        """
        The read in flight completed.
        """
        op = self._readOp
        assert op is not None
        self._readOp = None
        driver = self.reactor._driver
        if res > 0:
            driver.call(self, self.dataReceived, self._data(op.memory, res, flags))
        elif flags & F_BUFFER:
            # Nothing read into the buffer: back to the kernel with it.
            driver.recycleLate(res, flags)
        if res == 0:
            driver.lose(self, CONNECTION_DONE, True)
            return
        if res == _ENOBUFS:
            # Every provided buffer is in use: more join, and it reads again.
            assert driver.buffers is not None
            driver.buffers.shortage()
        elif res < 0 and res not in _READ_AGAIN:
            driver.lose(self, CONNECTION_LOST, True)
            return
        if self._reading and self._readOp is None and self.connected:
            self._armRead()

    def _lateRead(self, memory: Any, res: int, flags: int) -> None:
        """
        The last completion of a cancelled read, whose own buffer (if it
        has one) is C{memory}: data it read
        anyway is held for when reading resumes (end of file and errors
        show again to the next read).
        """
        if res <= 0 or not self.connected:
            # No data, or nobody to give it to: a provided buffer it took
            # goes back to the kernel.
            self.reactor._driver.recycleLate(res, flags)
            return
        self._held += self._data(memory, res, flags)
        if self._reading:
            # Reading resumed before this came back: it is delivered now,
            # before what the read made since then brings.
            held, self._held = self._held, b""
            self.reactor._driver.call(self, self.dataReceived, held)

    def _deliverHeld(self, held: bytes) -> None:
        """
        Deliver data a cancelled read brought, then read on.
        """
        if not self.connected or self.disconnected:
            return
        self.reactor._driver.call(self, self.dataReceived, held)
        if self._reading and self._readOp is None and self.connected:
            self._armRead()

    def connectionLost(self, reason: Any) -> None:
        self._held = b""
        if self._registered:
            self._registered = False
            self.reactor._driver.unregister(self)
        super().connectionLost(reason)


class Process(process.Process):
    """
    A child process whose output pipes are L{ProcessReader}s.
    """

    @property
    def processReaderFactory(self) -> Any:  # type: ignore[override]
        """
        L{ProcessReader}, unless C{twisted.internet.process.Process}'s own
        factory was replaced (as Twisted's tests do): the replacement wins,
        as it would on epoll.
        """
        replaced = process.Process.processReaderFactory
        if replaced is process.ProcessReader:
            return ProcessReader
        return replaced
