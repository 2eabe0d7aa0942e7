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

The read's buffer belongs to its operation until the operation's last
completion: cancelled (the protocol paused reading, or the pipe is
closing), the operation keeps it, and what a read that completed anyway
brought is held and delivered when reading resumes, so pausing loses
nothing.  End of file and read errors end the pipe as on epoll
(C{CONNECTION_DONE}, C{CONNECTION_LOST}).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import process
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from uringreactor._liburing import ffi
from uringreactor.operations import Operation

# Bytes one read asks for: the default capacity of a Linux pipe.
READ_SIZE = 65536

# What a read reports when it should simply be made again.
_READ_AGAIN = frozenset({-errno.EAGAIN, -errno.EINTR})

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
    # next), and what a cancelled read brought while reading was paused.
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
            self.reactor._driver.ring.cancel(
                op, late=lambda res, flags: self._lateRead(op, res)
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
        buffer, self._spare = self._spare, None
        if buffer is None:
            buffer = ffi.new("char[]", READ_SIZE)
        op = Operation(self._read, buffer)
        self._readOp = self.reactor._driver.ring.read(self.fd, buffer, READ_SIZE, op)

    def _read(self, res: int, flags: int) -> None:
        """
        The read in flight completed.
        """
        op = self._readOp
        assert op is not None
        self._readOp = None
        driver = self.reactor._driver
        if res > 0:
            data = _unpack(op.memory, res)
            # The kernel is done with the buffer: the next read takes it.
            self._spare = op.memory
            driver.call(self, self.dataReceived, data)
        elif res == 0:
            driver.lose(self, CONNECTION_DONE, True)
            return
        elif res not in _READ_AGAIN:
            driver.lose(self, CONNECTION_LOST, True)
            return
        if self._reading and self._readOp is None and self.connected:
            self._armRead()

    def _lateRead(self, op: Operation, res: int) -> None:
        """
        The last completion of the cancelled read C{op}: data it read
        anyway is held for when reading resumes (end of file and errors
        show again to the next read).
        """
        if res > 0 and self.connected:
            self._held += _unpack(op.memory, res)
            if self._reading:
                # Reading resumed before this came back: it is delivered
                # now, before what the read made since then brings.
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
