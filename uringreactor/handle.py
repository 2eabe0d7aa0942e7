"""
Completion-based socket I/O for L{twisted.internet.abstract.FileDescriptor}
subclasses.

L{CompletionIO} replaces readiness notifications with io_uring operations:

  - Reading keeps one receive operation in flight while the transport is
    reading.  With a provided buffer ring it is a multishot receive that
    stays armed and takes a buffer only when data arrives; otherwise a
    single receive into a buffer of the transport's own, re-armed after each
    completion.  Data that completes while reading is paused (a receive
    already in flight, or a multishot receive being cancelled) is held and
    delivered, in order, when reading resumes.  Nothing is re-armed while
    paused, so the kernel's receive buffer fills and TCP flow control pushes
    back on the peer.

  - Writing keeps C{FileDescriptor}'s buffer (C{_tempDataBuffer}, a list of
    C{bytes}) so that C{FileDescriptor.write} and C{writeSequence}, which
    Twisted's TLS layer calls directly, work unchanged.  Once per event-loop
    iteration the reactor asks each transport with pending output to flush:
    the whole list goes to the kernel as one vectored send, without joining
    it.  At most one send is in flight per transport, so bytes never
    reorder; a partial send continues from where it stopped.  The buffers of
    a send stay referenced until its completion.

  - Closing cancels the operations in flight; their late completions are
    absorbed by the ring (L{uringreactor.ring.Ring.cancel}) and never reach
    the protocol, and the socket is closed only after every prepared
    operation naming it has been submitted.

Errors map to what the epoll reactor reports: a failed read or write loses
the connection with L{twisted.internet.error.ConnectionLost}, end of file is
L{twisted.internet.error.ConnectionDone} (or C{readConnectionLost} for
half-closeable protocols), and exceptions raised by the protocol are logged
and disconnect it, via the reactor's C{_disconnectSelectable}.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import main
from twisted.python import log

from uringreactor._liburing import ffi, lib
from uringreactor.logcontext import ContextEntry
from uringreactor.outcomes import receiveEnd, sendFailure
from uringreactor.ring import (
    BUFFER_SHIFT,
    F_BUFFER,
    F_MORE,
    KIND_RECV,
    KIND_SEND,
    submissionError,
)

# The most buffers one vectored send takes (Linux's IOV_MAX).
IOV_MAX = 1024

# Buffered output smaller than this goes out as one joined copy rather than
# a vectored send: below it the copy is cheaper than building the iovec.
_JOIN_BELOW = 16384

# Output up to this size, from the only transport writing in an iteration,
# is sent with send() rather than through the ring (see _send).
_DIRECT_BELOW = 65536

# Receive buffer of a transport that has no provided buffer ring to use.
RECV_BUFFER_SIZE = 65536

_MSG_NOSIGNAL = socket.MSG_NOSIGNAL
_MSGHDR_SIZE = lib.ur_msghdr_size()
_ENOBUFS = -errno.ENOBUFS
_ECANCELED = -errno.ECANCELED

_LINGER_ABORT = struct.pack("ii", 1, 0)

_unpack = ffi.unpack
_fromBuffer = ffi.from_buffer
_prepRecv = lib.ur_prep_recv
_prepRecvMultishot = lib.ur_prep_recv_multishot
_prepSend = lib.ur_prep_send
_prepSendv = lib.ur_prep_sendv


def _coalesce(pieces: list[Any], length: int) -> list[Any]:
    """
    Join runs of small pieces, keep large ones as they are.

    Small writes are common (twisted.web writes a response as a dozen or two
    pieces) and for them one small copy is cheaper than an iovec entry each;
    more than 8 iovec entries also make the kernel allocate and may move the
    send off the fast path.  Large pieces go to the kernel uncopied.
    """
    if length <= _JOIN_BELOW:
        return [b"".join(pieces)]
    out: list[Any] = []
    run: list[Any] = []
    for piece in pieces:
        if len(piece) >= _JOIN_BELOW:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            out.append(piece)
        else:
            run.append(piece)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


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

    _reading: bool
    _recvOp: int
    _recvBuffer: Any
    _held: list[Any] | None
    _heldEnd: Exception | None
    _deliverCall: Any
    _recvDraining: bool
    _registered: bool
    _writing: bool
    _flushQueued: bool
    _sendOp: int
    _sendKeep: Any
    _sendLength: int
    _leftover: list[Any] | None
    _leftoverLength: int
    _aborting: bool

    # The transport's own state lives in slots, not in the instance
    # dictionary: CPython keeps an instance's attributes in a compact array
    # only while the class has seen at most 30 attribute names, and a
    # connection that adds a name past that gets a full dictionary (about
    # 830 bytes more).  Twisted's classes bring most of those names;
    # connections that close or register producers bring more.
    __slots__ = (
        # Reading: whether the protocol wants data, the receive in flight,
        # its buffer (single-shot receives), data and an end of stream
        # held while reading is paused, the call that will deliver them,
        # and whether a cancelled multishot receive may still deliver data
        # (nothing is re-armed until its final completion, so data cannot
        # reorder).
        "_reading",
        "_recvOp",
        "_recvBuffer",
        "_held",
        "_heldEnd",
        "_deliverCall",
        "_recvDraining",
        # Whether the reactor lists this transport (IOUringReactor._handles).
        "_registered",
        # Writing: whether output is wanted, whether the reactor will flush
        # this iteration, the send in flight (its operation, what it keeps
        # alive and its length) and what waits for it.
        "_writing",
        "_flushQueued",
        "_sendOp",
        "_sendKeep",
        "_sendLength",
        "_leftover",
        "_leftoverLength",
        "_aborting",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Slots have no class defaults: set them here, before the host
        # class's constructor (which starts reading) and only once (Twisted
        # calls a connection's __init__ again on a connected client).
        self = super().__new__(cls)
        self._reading = False
        self._recvOp = 0
        self._recvBuffer = None
        self._held = None
        self._heldEnd = None
        self._deliverCall = None
        self._recvDraining = False
        self._registered = False
        self._writing = False
        self._flushQueued = False
        self._sendOp = 0
        self._sendKeep = None
        self._sendLength = 0
        self._leftover = None
        self._leftoverLength = 0
        self._aborting = False
        return self

    # -- reading --------------------------------------------------------

    def startReading(self) -> None:
        """
        Deliver received data to the protocol (again).
        """
        if self._reading:
            return
        self._reading = True
        reactor = self.reactor
        if not self._registered:
            self._registered = True
            reactor._handles.add(self)
        if self._recvDraining:
            return
        if self._held is not None or self._heldEnd is not None:
            # Deliver later, never from inside the caller (which may be the
            # protocol's own dataReceived).
            if self._deliverCall is None:
                self._deliverCall = reactor.callLater(0, self._deliverHeld)
        elif not self._recvOp:
            self._armRecv()

    def stopReading(self) -> None:
        """
        Stop delivering received data; the kernel stops reading the socket
        once the receive already in flight (if any) completes.
        """
        if not self._reading:
            return
        self._reading = False
        if self._deliverCall is not None:
            self._deliverCall.cancel()
            self._deliverCall = None
        # A multishot receive stays armed: protocols that pause while they
        # work on a request (twisted.web does, for every request) usually
        # resume before the peer sends more, and then nothing needs doing.
        # Data that does arrive while paused is held and the receive is
        # cancelled then (see _pausedData), so the kernel stops reading the
        # socket and TCP pushes back on the peer.

    def _armRecv(self) -> None:
        try:
            fd = self.socket.fileno()
        except AttributeError:
            return
        self._recvOp = self._prepareRecv(self.reactor._ring, fd)

    def _prepareRecv(self, ring: Any, fd: int) -> int:
        """
        Prepare the receive operation for C{fd}.

        @return: its C{user_data}.
        """
        bufferRing = self.reactor._bufferRing
        if bufferRing is not None:
            # The transport itself handles its multishot receive (see
            # __call__): an idle connection then costs no bound-method
            # object in the operation table.
            return ring.track(  # type: ignore[no-any-return]
                _prepRecvMultishot(ring._ptr, fd, bufferRing.groupId, 0, KIND_RECV),
                self,
            )
        buf = self._recvBuffer
        if buf is None:
            buf = self._recvBuffer = ffi.new("char[]", RECV_BUFFER_SIZE)
        return ring.track(  # type: ignore[no-any-return]
            _prepRecv(ring._ptr, fd, buf, RECV_BUFFER_SIZE, 0, KIND_RECV),
            self._recvDone,
        )

    def _recvDone(self, res: int, flags: int) -> None:
        """
        Completion of a single-shot receive into C{_recvBuffer}.
        """
        self._recvOp = 0
        if res > 0:
            self._received(_unpack(self._recvBuffer, res))
            return
        why = receiveEnd(res)
        if why is not None:
            self._readEnded(why)
        elif self._reading:
            self._armRecv()

    def _received(self, data: Any) -> None:
        """
        Deliver what a single-shot receive brought, or hold it while reading
        is paused, and keep receiving.
        """
        if self._reading:
            self._deliver(data)
            if self._reading and not self._recvOp and not self.disconnected:
                self._armRecv()
        else:
            self._hold(data)

    def _recvMultishotDone(self, res: int, flags: int) -> None:
        """
        Completion of a multishot receive into the reactor's buffer ring.
        """
        if res > 0 and self._reading:
            # The common case, kept short (this runs once per read): data
            # for a reading transport, delivered within the protocol's log
            # context (LogContexts.call, inlined).
            reactor = self.reactor
            data = reactor._bufferRing.take(flags >> BUFFER_SHIFT, res)
            logContexts = reactor._logContexts
            stack = logContexts.stack
            if stack is None:
                logContexts.call(self, self._deliverInContext, data)
            else:
                # _deliverInContext, inlined.
                stack.append(ContextEntry(self, logContexts.base))
                try:
                    try:
                        why = self._dataReceived(data)  # type: ignore[attr-defined]
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        reactor._disconnectSelectable(self, why, True)
                finally:
                    stack.pop()
            if flags & F_MORE:
                return
            self._recvOp = 0
            if self._reading and not self.disconnected and self._held is None:
                self._armRecv()
            return
        if not flags & F_MORE:
            self._recvOp = 0
        if res > 0:
            self._hold(self.reactor._bufferRing.take(flags >> BUFFER_SHIFT, res))
            if self._recvOp and not self._reading:
                self._pausedData()
                return
        elif flags & F_BUFFER:
            self.reactor._bufferRing.recycle(flags >> BUFFER_SHIFT)
        elif res == _ENOBUFS:
            self.reactor._bufferRing.shortage()
        if res <= 0:
            why = receiveEnd(res)
            if why is not None:
                # End of file or an error: the multishot receive has ended.
                self._readEnded(why)
                return
        if (
            not self._recvOp
            and self._reading
            and not self.disconnected
            and self._held is None
        ):
            # The kernel ended the multishot receive (no buffer was free, or
            # it chose to): arm it again.  Data already delivered came from
            # completions that preceded this one, so nothing reorders.
            self._armRecv()

    __call__ = _recvMultishotDone

    def _pausedData(self) -> None:
        """
        Data arrived while reading is paused: stop the multishot receive,
        keeping whatever it still delivers for when reading resumes.
        """
        self.reactor._ring.cancel(self._recvOp, late=self._recvLate)
        self._recvOp = 0
        self._recvDraining = True

    def _recvLate(self, res: int, flags: int) -> None:
        """
        A completion of a multishot receive cancelled because reading was
        paused: keep its data for when reading resumes.
        """
        if res > 0:
            self._hold(self.reactor._bufferRing.take(flags >> BUFFER_SHIFT, res))
        elif flags & F_BUFFER:
            self.reactor._bufferRing.recycle(flags >> BUFFER_SHIFT)
        elif res == _ENOBUFS:
            self.reactor._bufferRing.shortage()
        if flags & F_MORE:
            return
        if res <= 0 and res != _ECANCELED:
            why = receiveEnd(res)
            if why is not None and self._heldEnd is None:
                self._heldEnd = why
        self._recvDraining = False
        if self._reading and not self.disconnected and self._deliverCall is None:
            self._deliverCall = self.reactor.callLater(0, self._deliverHeld)

    def _hold(self, data: Any) -> None:
        if self._held is None:
            self._held = [data]
        else:
            self._held.append(data)

    def _deliverHeld(self) -> None:
        self._deliverCall = None
        if self._recvDraining:
            return
        while self._held and self._reading and not self.disconnected:
            data = self._held.pop(0)
            self._deliver(data)
        if self._held is not None and not self._held:
            self._held = None
        if not self._reading or self.disconnected or self._held:
            return
        if self._heldEnd is not None:
            why, self._heldEnd = self._heldEnd, None
            self._readEndedWith(why)
        elif not self._recvOp:
            self._armRecv()

    def _readEnded(self, why: Exception) -> None:
        if self._reading:
            self._readEndedWith(why)
        elif self._heldEnd is None:
            self._heldEnd = why

    def _readEndedWith(self, why: Exception) -> None:
        self.reactor._logContexts.call(
            self, self.reactor._disconnectSelectable, self, why, True
        )

    def _deliver(self, data: Any) -> None:
        """
        Hand C{data} to the protocol within its logging context; an exception
        from the protocol disconnects it, as on epoll.
        """
        self.reactor._logContexts.call(self, self._deliverInContext, data)

    def _deliverInContext(self, data: Any) -> None:
        try:
            why = self._dataReceived(data)  # type: ignore[attr-defined]
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.reactor._disconnectSelectable(self, why, True)

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
            self._flushQueued = True
            self.reactor._flushQueue.append(self)
            if not self._registered:
                self._registered = True
                self.reactor._handles.add(self)

    def startWriting(self) -> None:
        """
        Arrange for buffered output to be sent at the end of this iteration.
        """
        self._writing = True
        if not self._flushQueued:
            self._flushQueued = True
            reactor = self.reactor
            reactor._flushQueue.append(self)
            if not self._registered:
                self._registered = True
                reactor._handles.add(self)

    def stopWriting(self) -> None:
        """
        Stop sending buffered output.
        """
        self._writing = False

    def _isSendBufferFull(self) -> bool:
        return (
            self._sendLength + self._leftoverLength + self._tempDataLen
            > self.bufferSize
        )

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
        if self._sendOp or not self._writing or self.disconnected or self._aborting:
            return False
        pieces = self._leftover
        length = self._leftoverLength
        if self._tempDataBuffer:
            if pieces is None:
                pieces = self._tempDataBuffer
            else:
                pieces.extend(self._tempDataBuffer)
            length += self._tempDataLen
            self._tempDataBuffer = []
            self._tempDataLen = 0
        if not pieces:
            self._leftover = None
            self._leftoverLength = 0
            self._drained()
            return True
        if len(pieces) > IOV_MAX:
            self._leftover = pieces[IOV_MAX:]
            pieces = pieces[:IOV_MAX]
            sendLength = sum(map(len, pieces))
            self._leftoverLength = length - sendLength
            length = sendLength
        else:
            self._leftover = None
            self._leftoverLength = 0
        return self._send(pieces, length)

    def _send(self, pieces: list[Any], length: int) -> bool:
        """
        Send C{pieces} (C{length} bytes in all).

        @return: C{True} if it was sent at once and that ran application
            code (see L{_flush}).
        """
        reactor = self.reactor
        if len(pieces) > 1:
            pieces = _coalesce(pieces, length)
        if reactor._sendDirectly and len(pieces) == 1 and length <= _DIRECT_BELOW:
            # The only transport with output this iteration (a
            # request-response exchange): one send() now costs the same
            # system call as the io_uring_enter that would submit it, and
            # saves its completion, which would otherwise wake the loop
            # once more before the next request.
            try:
                sent = self.socket.send(pieces[0], _MSG_NOSIGNAL)
            except OSError as e:
                why = sendFailure(e.errno or 0)
                if why is not None:
                    reactor._logContexts.call(
                        self, reactor._disconnectSelectable, self, why, False
                    )
                    return True
                sent = 0
            if sent == length:
                return self._sent(length, length, pieces)
            pieces = self._remainder(pieces, sent)
            length -= sent
        ring = reactor._ring
        fd = self.fileno()  # type: ignore[attr-defined]
        if len(pieces) == 1:
            piece = pieces[0]
            if type(piece) is bytes:
                # Passed as it is: the kernel reads the object's own storage,
                # which stays put while `pieces` holds the object.
                keep: Any = (pieces,)
                ud = _prepSend(ring._ptr, fd, piece, length, _MSG_NOSIGNAL, KIND_SEND)
            else:
                buf = _fromBuffer(piece)
                keep = (pieces, buf)
                ud = _prepSend(ring._ptr, fd, buf, length, _MSG_NOSIGNAL, KIND_SEND)
        else:
            count = len(pieces)
            iov = ffi.new("struct iovec[]", count)
            buffers = []
            for i, piece in enumerate(pieces):
                buf = _fromBuffer(piece)
                buffers.append(buf)
                entry = iov[i]
                entry.iov_base = buf
                entry.iov_len = len(piece)
            msg = ffi.new("char[]", _MSGHDR_SIZE)
            keep = (pieces, buffers, iov, msg)
            ud = _prepSendv(ring._ptr, fd, iov, count, msg, _MSG_NOSIGNAL, KIND_SEND)
        # Ring.track, inlined: this runs once per send.
        if ud < 0:
            raise submissionError(ud)
        ring.ops[ud] = self._sendDone
        self._sendOp = ud
        self._sendKeep = keep
        self._sendLength = length
        return False

    def _sendDone(self, res: int, flags: int) -> bool:
        """
        A send completed.

        @return: C{True} if that ran application code.
        """
        length = self._sendLength
        pieces = self._sendKeep[0]
        self._sendOp = 0
        self._sendKeep = None
        self._sendLength = 0
        return self._sent(res, length, pieces)

    def _sent(self, res: int, length: int, pieces: list[Any]) -> bool:
        """
        C{res} bytes (or an error) of a send of C{length} bytes from
        C{pieces} have gone: send the rest, or conclude.

        @return: C{True} if that ran application code.
        """
        if res == length:
            if self._leftover or self._tempDataBuffer:
                self.startWriting()
            elif (
                not self.disconnecting
                and not self._writeDisconnecting
                and (
                    self.producer is None
                    or (self.streamingProducer and not self.producerPaused)
                )
            ):
                # Drained, and nobody waits for that: stop writing.
                self._writing = False
            else:
                self._drained()
                return True
            return False
        if res < 0:
            why = sendFailure(-res)
            if why is None:
                self._requeue(pieces, length)
                return False
            self.reactor._logContexts.call(
                self, self.reactor._disconnectSelectable, self, why, False
            )
            return True
        self._requeue(self._remainder(pieces, res), length - res)
        return False

    @staticmethod
    def _remainder(pieces: list[Any], sent: int) -> list[Any]:
        """
        What is left of C{pieces} once C{sent} bytes of them have gone.
        """
        index = 0
        for index, piece in enumerate(pieces):  # noqa: B007
            size = len(piece)
            if sent < size:
                break
            sent -= size
        rest = pieces[index:]
        if sent:
            rest[0] = memoryview(rest[0])[sent:]
        return rest

    def _requeue(self, pieces: list[Any], length: int) -> None:
        if self._leftover:
            pieces.extend(self._leftover)
        self._leftover = pieces
        self._leftoverLength += length
        self.startWriting()

    def _drained(self) -> None:
        """
        Everything buffered has been sent: the end of
        C{FileDescriptor.doWrite}.
        """
        self.reactor._logContexts.call(self, self._drainedInContext)

    def _drainedInContext(self) -> None:
        try:
            why = self._afterDrain()
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.reactor._disconnectSelectable(self, why, False)

    def _afterDrain(self) -> Any:
        if self.disconnecting or self._writeDisconnecting:
            # epoll's doWrite sends (possibly empty) data before concluding,
            # so a connection the peer has reset, or whose write side is
            # already shut down, is lost rather than closed cleanly.  Probe
            # the same way before closing.
            try:
                self.socket.send(b"", _MSG_NOSIGNAL)
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
        Cancel every operation in flight for this transport.  Their buffers
        stay alive until the kernel lets go of them; their completions are
        not delivered.
        """
        reactor = self.reactor
        ring = reactor._ring
        if self._registered:
            self._registered = False
            reactor._handles.discard(self)
        if self._recvOp:
            late = reactor._recycleLate if reactor._bufferRing is not None else None
            ring.cancel(self._recvOp, keep=self._recvBuffer, late=late)
            self._recvOp = 0
        self._recvDraining = False
        if self._sendOp:
            ring.cancel(self._sendOp, keep=self._sendKeep)
            self._sendOp = 0
            self._sendKeep = None
        if self._deliverCall is not None:
            self._deliverCall.cancel()
            self._deliverCall = None
        self._held = None
        self._heldEnd = None
        self._leftover = None
        self._leftoverLength = 0
        self._sendLength = 0

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
        self.reactor._ring.closeAfterSubmit(skt)
