"""
UNIX stream sockets over io_uring, with descriptor passing.

The classes extend Twisted's L{twisted.internet.unix} classes (addresses,
abstract namespace, C{wantPID} lock files, C{_SendmsgMixin}'s descriptor
queue and its handling of received control messages) and replace their
readiness-driven I/O with io_uring operations, as L{uringreactor.tcp} does
for TCP:

  - reads are recvmsg operations with room for control data, so that
    descriptors sent by the peer arrive with the bytes they were sent
    with; the data goes into a provided buffer where the kernel has them;

  - a descriptor queued with C{sendFileDescriptor} leaves with one byte of
    the stream in its own sendmsg operation, in order with the rest of the
    stream, exactly as C{_SendmsgMixin.writeSomeData} sends it.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import error, unix
from twisted.python import log

from uringreactor import tcp
from uringreactor._liburing import ffi, lib
from uringreactor.accepting import AcceptingPort
from uringreactor.connecting import PollConnecting
from uringreactor.handle import RECV_BUFFER_SIZE, CompletionIO
from uringreactor.messages import (
    CONTROL_SIZE,
    Ancillary,
    closeDescriptors,
    receivedControl,
)
from uringreactor.outcomes import receiveEnd
from uringreactor.ring import BUFFER_SHIFT, F_BUFFER, KIND_RECV, KIND_SEND

_ENOBUFS = -errno.ENOBUFS
_MSG_NOSIGNAL = socket.MSG_NOSIGNAL


class MessageStreamIO(CompletionIO):
    """
    L{CompletionIO} for a UNIX stream socket: receives carry control data,
    and queued descriptors are sent along the stream.

    The host class mixes in Twisted's C{_SendmsgMixin}, which provides
    C{_sendmsgQueue}, C{sendFileDescriptor} and
    C{_ancillaryLevelSOLSOCKETTypeSCMRIGHTS}.
    """

    _sendmsgQueue: list[int]
    _fileDescriptorBufferSize: int
    protocol: Any
    # The recvmsg header and control area of the receive in flight.
    _msg: Any = None

    # -- reading --------------------------------------------------------

    def _prepareRecv(self, ring: Any, fd: int) -> int:
        bufferRing = self.reactor._bufferRing
        msg = self._msg
        if msg is None:
            msg = self._msg = ffi.new("struct ur_msg *")
        if bufferRing is not None:
            ud = lib.ur_prep_recvmsg_into(
                ring._ptr,
                fd,
                msg,
                ffi.NULL,
                bufferRing.bufferSize,
                0,
                CONTROL_SIZE,
                bufferRing.groupId,
                KIND_RECV,
            )
        else:
            buf = self._recvBuffer
            if buf is None:
                buf = self._recvBuffer = ffi.new("char[]", RECV_BUFFER_SIZE)
            ud = lib.ur_prep_recvmsg_into(
                ring._ptr,
                fd,
                msg,
                buf,
                RECV_BUFFER_SIZE,
                0,
                CONTROL_SIZE,
                -1,
                KIND_RECV,
            )
        return ring.track(ud, self._recvmsgDone)

    def _recvmsgDone(self, res: int, flags: int) -> None:
        self._recvOp = 0
        if res <= 0:
            if flags & F_BUFFER:
                self.reactor._bufferRing.recycle(flags >> BUFFER_SHIFT)
            if res == _ENOBUFS:
                self.reactor._bufferRing.shortage()
            why = receiveEnd(res)
            if why is not None:
                self._readEnded(why)
            elif self._reading:
                # No data after all, or no free buffer this time round.
                self._armRecv()
            return
        if flags & F_BUFFER:
            data = self.reactor._bufferRing.take(flags >> BUFFER_SHIFT, res)
        else:
            data = ffi.unpack(self._recvBuffer, res)
        ancillary = receivedControl(self._msg)
        self._received((data, ancillary) if ancillary else data)

    def _deliverInContext(self, data: Any) -> None:
        # What _SendmsgMixin.doRead does with what recvmsg returned:
        # descriptors first, then the bytes they came with.
        try:
            if type(data) is tuple:
                data, ancillary = data
                self._handleAncillary(ancillary)
            why = self._dataReceived(data)  # type: ignore[attr-defined]
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.reactor._disconnectSelectable(self, why, True)

    def _handleAncillary(self, ancillary: Ancillary) -> None:
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self._ancillaryLevelSOLSOCKETTypeSCMRIGHTS(cdata)  # type: ignore[attr-defined]
            else:
                log.msg(
                    format=(
                        "%(protocolName)s (on %(hostAddress)r) "
                        "received unsupported ancillary data "
                        "(level=%(cmsgLevel)r, type=%(cmsgType)r) "
                        "from %(peerAddress)r."
                    ),
                    hostAddress=self.getHost(),  # type: ignore[attr-defined]
                    peerAddress=self.getPeer(),  # type: ignore[attr-defined]
                    protocolName=self._getLogPrefix(self.protocol),  # type: ignore[attr-defined]
                    cmsgLevel=level,
                    cmsgType=kind,
                )

    def _recvmsgLate(self, res: int, flags: int) -> None:
        """
        A completion of a receive cancelled because the transport closed:
        close any descriptor it brought, give its buffer back.
        """
        if res > 0:
            closeDescriptors(receivedControl(self._msg))
        if flags & F_BUFFER:
            self.reactor._bufferRing.recycle(flags >> BUFFER_SHIFT)

    def _cancelIO(self) -> None:
        if self._recvOp:
            self.reactor._ring.cancel(
                self._recvOp,
                keep=(self._msg, self._recvBuffer),
                late=self._recvmsgLate,
            )
            self._recvOp = 0
        held = self._held
        super()._cancelIO()
        # Descriptors received but never delivered are closed, not leaked.
        for item in held or ():
            if type(item) is tuple:
                closeDescriptors(item[1])

    # -- writing --------------------------------------------------------

    def _isSendBufferFull(self) -> bool:
        return (
            len(self._sendmsgQueue) > self._fileDescriptorBufferSize
            or super()._isSendBufferFull()
        )

    def _flush(self) -> bool:
        if not self._sendmsgQueue:
            return super()._flush()
        self._flushQueued = False
        if self._sendOp or not self._writing or self.disconnected or self._aborting:
            return False
        pieces = self._leftover or []
        pieces.extend(self._tempDataBuffer)
        length = self._leftoverLength + self._tempDataLen
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self._leftover = pieces or None
        self._leftoverLength = length
        if len(self._sendmsgQueue) > length:
            # Each descriptor travels with one byte of the stream: more
            # descriptors than bytes is the same error as on epoll.
            self.reactor._logContexts.call(
                self,
                self.reactor._disconnectSelectable,
                self,
                error.FileDescriptorOverrun(),
                False,
            )
            return True
        first = pieces[0]
        byte = bytes(first[:1])
        if len(first) > 1:
            pieces[0] = memoryview(first)[1:]
        else:
            del pieces[0]
        self._leftover = pieces or None
        self._leftoverLength = length - 1
        ring = self.reactor._ring
        msg = ffi.new("struct ur_msg *")
        ud = lib.ur_prep_sendmsg_to(
            ring._ptr,
            self.socket.fileno(),
            msg,
            byte,
            1,
            ffi.NULL,
            0,
            self._sendmsgQueue[0],
            _MSG_NOSIGNAL,
            0,
            KIND_SEND,
        )
        self._sendOp = ring.track(ud, self._sendFileDescriptorDone)
        self._sendKeep = ([byte], msg)
        self._sendLength = 1
        return False

    def _sendFileDescriptorDone(self, res: int, flags: int) -> None:
        if res == 1:
            del self._sendmsgQueue[0]
        self._sendDone(res, flags)

    def _sendDone(self, res: int, flags: int) -> bool:
        ranApplicationCode = super()._sendDone(res, flags)
        if self._sendmsgQueue and not self._sendOp and not self.disconnected:
            # Descriptors wait for bytes to travel with: flush again, which
            # sends them or reports the overrun, as epoll's next doWrite
            # would.
            self.startWriting()
        return ranApplicationCode


class Server(MessageStreamIO, unix.Server):
    """
    The server side of an accepted UNIX stream connection.
    """

    _base = tcp.Connection


class Client(PollConnecting, MessageStreamIO, unix.Client):
    """
    The client side of a UNIX stream connection made by C{connectUNIX}.
    """

    _base = tcp.Connection
    _commonConnection = tcp.Connection


class Port(AcceptingPort, unix.Port):
    """
    A listening UNIX stream socket that accepts through io_uring.
    """

    transport = Server


class Connector(unix.Connector):
    """
    Connects a client factory to a UNIX socket path through L{Client}.
    """

    def _makeTransport(self) -> Any:
        return Client(self.address, self, self.reactor, self.checkPID)


__all__ = ["Client", "Connector", "Port", "Server"]
