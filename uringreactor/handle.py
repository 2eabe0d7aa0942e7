"""
Completion-based socket I/O for L{twisted.internet.abstract.FileDescriptor}
subclasses.

L{CompletionIO} replaces readiness notifications with io_uring operations,
and composes two objects that do the work:

  - a receiver (L{uringreactor.receiving}) keeps one receive operation in
    flight while the transport is reading and holds what arrives while
    reading is paused;

  - a sender (L{uringreactor.sending}) sends what C{FileDescriptor}
    buffers, once per event-loop iteration, one send in flight at a time.

What remains here is C{FileDescriptor}'s part: C{startReading} and
C{stopReading}, C{write}, what happens once everything buffered has gone
(a pending C{loseConnection}, a producer to resume, a half-close), and
closing: cancelling the operations in flight, whose late completions the
ring absorbs (L{uringreactor.ring.Ring.cancel}) and which never reach the
protocol, and closing the socket only after every prepared operation
naming it has been submitted.

Errors map to what the epoll reactor reports (L{uringreactor.outcomes}): a
failed read or write loses the connection with
L{twisted.internet.error.ConnectionLost}, end of file is
L{twisted.internet.error.ConnectionDone} (or C{readConnectionLost} for
half-closeable protocols), and exceptions raised by the protocol are logged
and disconnect it, via the reactor's C{_disconnectSelectable}.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import main
from twisted.internet.abstract import _dataMustBeBytes
from twisted.python import log

from uringreactor.logcontext import ContextEntry
from uringreactor.operations import MSG_NOSIGNAL
from uringreactor.receiving import Receiver, receiverFor
from uringreactor.sending import Sender

_LINGER_ABORT = struct.pack("ii", 1, 0)

_BYTES_ONLY = {bytes}


def _byteLengthInPython(pieces: Any) -> int:
    """
    The total length of C{pieces} if they are all bytes, else -1: what
    C{uringreactor._pieces.byte_length} does in C, for where that is not
    built (PyPy, whose JIT compiles this well).  Also -1 for subclasses of
    bytes, which the caller then checks one by one.
    """
    if not set(map(type, pieces)) <= _BYTES_ONLY:
        return -1
    return sum(map(len, pieces))


if platform.python_implementation() == "CPython":
    from uringreactor._pieces import byte_length as _byteLength
else:
    _byteLength = _byteLengthInPython


if TYPE_CHECKING:
    # What the host class provides, and what the type checker should know
    # the mixin is mixed into (a base with slots only would hide __dict__).
    from twisted.internet.abstract import FileDescriptor as _Host
else:
    _Host = object


class CompletionIO(_Host):
    """
    Mixin for a L{twisted.internet.abstract.FileDescriptor} over a stream
    socket whose reads and writes are io_uring operations.

    The host class provides C{reactor} (an
    L{uringreactor.reactor.IOUringReactor}), C{socket}, C{protocol}, and the
    C{FileDescriptor} attributes.
    """

    # Marks objects the reactor drives by completions, not readiness.
    _uringHandle = True

    reactor: Any
    socket: socket.socket
    connected: int
    disconnected: int
    disconnecting: int
    producer: Any
    producerPaused: bool
    streamingProducer: bool
    bufferSize: int
    _tempDataBuffer: list[bytes]
    _tempDataLen: int
    _writeDisconnecting: bool
    _writeDisconnected: bool

    _receiver: Receiver | None
    _sender: Sender | None
    _registered: bool
    _writing: bool
    _flushQueued: bool
    _aborting: bool

    # The transport's own state lives in slots, not in the instance
    # dictionary: CPython keeps an instance's attributes in a compact array
    # only while the class has seen at most 30 attribute names, and a
    # connection that adds a name past that gets a full dictionary (about
    # 830 bytes more).  Twisted's classes bring most of those names;
    # connections that close or register producers bring more.
    __slots__ = (
        # The receive and send sides, made when first needed.
        "_receiver",
        "_sender",
        # Whether the reactor lists this transport (Driver.handles).
        "_registered",
        # Whether output is wanted, and whether the reactor will flush this
        # transport this iteration.
        "_writing",
        "_flushQueued",
        "_aborting",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Slots have no class defaults: set them here, before the host
        # class's constructor (which starts reading) and only once (Twisted
        # calls a connection's __init__ again on a connected client).
        self = super().__new__(cls)
        self._receiver = None
        self._sender = None
        self._registered = False
        self._writing = False
        self._flushQueued = False
        self._aborting = False
        return self

    def _newReceiver(self, driver: Any) -> Receiver:
        """
        The receive side of this transport (see L{uringreactor.receiving}).
        """
        return receiverFor(self, driver)

    def _newSender(self, driver: Any) -> Sender:
        """
        The send side of this transport (see L{uringreactor.sending}): an
        idle one the driver keeps, or a new one.
        """
        pool = driver.idleSenders
        if pool:
            sender: Sender = pool.pop()
            sender.transport = self
            return sender
        return Sender(self, driver)

    def _register(self, driver: Any) -> None:
        if not self._registered:
            self._registered = True
            # Driver.register, inlined: this runs once per connection.
            driver.handles.add(self)

    # -- reading --------------------------------------------------------

    @property
    def _reading(self) -> bool:
        """
        Whether the protocol wants data (for the reactor's C{getReaders}).
        """
        receiver = self._receiver
        return receiver is not None and receiver.reading

    def startReading(self) -> None:
        """
        Deliver received data to the protocol (again).
        """
        receiver = self._receiver
        if receiver is None:
            driver = self.reactor._driver
            receiver = self._receiver = self._newReceiver(driver)
        if not self._registered:
            self._register(receiver.driver)
        receiver.start()

    def _removedAsReader(self) -> None:
        """
        C{reactor.removeReader(self)}: stop reading and leave the socket to
        whatever else may read it (see L{Receiver.stop}).
        """
        if self._receiver is not None:
            self._receiver.stop()

    def stopReading(self) -> None:
        """
        Stop delivering received data; the kernel stops reading the socket
        once the receive already in flight (if any) completes or is
        cancelled.
        """
        if self._receiver is not None:
            self._receiver.pause()

    # -- writing --------------------------------------------------------

    # Set by Twisted's TLS mixin once startTLS has been called.
    TLS = False

    def write(self, data: bytes) -> None:
        """
        Buffer C{data} to be sent at the end of this iteration (see
        L{ITransport.write}); C{FileDescriptor.write} without its detours.
        """
        if self.TLS or type(data) is not bytes:
            # TLS, or a type check that must fail loudly: the general path.
            super().write(data)  # type: ignore[misc]
            return
        if not self.connected or self._writeDisconnected or not data:
            return
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        if self.producer is not None:
            self._maybePauseProducer()  # type: ignore[attr-defined]
        self._writing = True
        if not self._flushQueued:
            # _queueFlush, inlined: this runs once per request.
            self._flushQueued = True
            driver = self.reactor._driver
            driver.flushQueue.append(self)
            if self._sender is None:
                self._sender = self._newSender(driver)
            if not self._registered:
                self._register(driver)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """
        Buffer every piece of C{iovec} (see L{ITransport.writeSequence}):
        C{FileDescriptor.writeSequence}, checking and counting the pieces in
        one pass in C (twisted.web writes a response's headers this way, a
        few dozen pieces per request).
        """
        if self.TLS:
            super().writeSequence(iovec)  # type: ignore[misc]
            return
        length = _byteLength(iovec)
        if length < 0:
            # Not a list or tuple of bytes only.
            for piece in iovec:
                # Raises for anything but bytes (or a subclass of bytes).
                _dataMustBeBytes(piece)
            length = sum(map(len, iovec))
        if not self.connected or not iovec or self._writeDisconnected:
            return
        self._tempDataBuffer.extend(iovec)
        self._tempDataLen += length
        if self.producer is not None:
            self._maybePauseProducer()  # type: ignore[attr-defined]
        self._writing = True
        if not self._flushQueued:
            # _queueFlush, inlined as in write(): this runs once per request.
            self._flushQueued = True
            driver = self.reactor._driver
            driver.flushQueue.append(self)
            if self._sender is None:
                self._sender = self._newSender(driver)
            if not self._registered:
                self._register(driver)

    def startWriting(self) -> None:
        """
        Arrange for buffered output to be sent at the end of this iteration.
        """
        self._writing = True
        if not self._flushQueued:
            self._queueFlush()

    def _sendSide(self) -> Sender:
        """
        The send side of this transport, which it holds only while it has
        output (see L{Sender.release}).
        """
        sender = self._sender
        if sender is None:
            sender = self._sender = self._newSender(self.reactor._driver)
        return sender

    def _queueFlush(self) -> None:
        driver = self.reactor._driver
        self._sendSide()
        driver.queueFlush(self)
        if not self._registered:
            self._register(driver)

    def stopWriting(self) -> None:
        """
        Stop sending buffered output.
        """
        self._writing = False

    def _isSendBufferFull(self) -> bool:
        sender = self._sender
        pending = 0 if sender is None else sender.pending
        return pending + self._tempDataLen > self.bufferSize

    def _flush(self) -> bool:
        """
        Called by the reactor once per iteration for transports that asked
        to write: send what is buffered, or finish what waited for the buffer
        to drain.

        @return: C{True} if application code ran (the buffer was already
            empty, so a pending C{loseConnection} completed or a producer was
            resumed).
        """
        self._flushQueued = False
        if not self._writing or self.disconnected or self._aborting:
            return False
        assert self._sender is not None
        return self._sender.flush()

    def _allSent(self) -> bool:
        """
        Everything given to the sender has gone, the last of it just now:
        stop writing, or, if something waits for that, conclude.

        @return: C{True} if application code ran.
        """
        if (
            not self.disconnecting
            and not self._writeDisconnecting
            and (
                self.producer is None
                or (self.streamingProducer and not self.producerPaused)
            )
        ):
            # Drained, and nobody waits for that: stop writing.
            self._writing = False
            return False
        self._drained(justSent=True)
        return True

    def _drained(self, justSent: bool = False) -> None:
        """
        Everything buffered has been sent: the end of
        C{FileDescriptor.doWrite}.

        @param justSent: whether a send of this transport's data has just
            succeeded (otherwise the buffer was already empty).
        """
        logContexts = self.reactor._driver.logContexts
        stack = logContexts.stack
        if stack is None:
            logContexts.call(self, self._drainedInContext, justSent)
            return
        # LogContexts.call, inlined: this runs once per response that closes
        # its connection or resumes a producer.
        stack.append(ContextEntry(self, logContexts.base))
        try:
            self._drainedInContext(justSent)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err()
        finally:
            stack.pop()

    def _drainedInContext(self, justSent: bool) -> None:
        try:
            why = self._afterDrain(justSent)
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.reactor._disconnectSelectable(self, why, False)

    def _afterDrain(self, justSent: bool) -> Any:
        if (self.disconnecting or self._writeDisconnecting) and not justSent:
            # epoll's doWrite sends (possibly empty) data before concluding,
            # so a connection the peer has reset, or whose write side is
            # already shut down, is lost rather than closed cleanly.  Probe
            # the same way before closing, unless a send has just succeeded:
            # that was epoll's send of the last data, after which its
            # doWrite concludes at once.
            try:
                self.socket.send(b"", MSG_NOSIGNAL)
            except BlockingIOError:
                pass
            except OSError:
                return main.CONNECTION_LOST
        self.stopWriting()
        if self.producer is not None and (
            (not self.streamingProducer) or self.producerPaused
        ):
            self.producerPaused = False
            self.producer.resumeProducing()
        elif self.disconnecting:
            return self._postLoseConnection()  # type: ignore[attr-defined]
        elif self._writeDisconnecting:
            self._writeDisconnected = True
            return self._closeWriteConnection()  # type: ignore[attr-defined]
        return None

    # -- closing --------------------------------------------------------

    def _cancelIO(self) -> None:
        """
        Cancel every operation in flight for this transport.  Their memory
        stays alive until the kernel lets go of it; their completions are
        not delivered.
        """
        if self._registered:
            self._registered = False
            self.reactor._driver.handles.discard(self)
        if self._receiver is not None:
            self._receiver.close()
        if self._sender is not None:
            self._sender.close()

    def _closeSocket(self, orderly: bool) -> None:
        """
        Shut the socket down now; close it once no prepared operation can
        still name its descriptor.
        """
        self._cancelIO()
        skt = self.socket
        try:
            if orderly:
                if getattr(self, "_shouldShutdown", True):
                    skt.shutdown(2)
            else:
                # SO_LINGER 0: close sends a reset instead of a FIN.
                skt.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        self.reactor._driver.ring.closeAfterSubmit(skt)
