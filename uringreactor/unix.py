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
import functools
import socket
from typing import Any

from twisted.internet import error, unix
from twisted.python import log

from uringreactor import tcp
from uringreactor._liburing import ffi
from uringreactor.accepting import AcceptingPort
from uringreactor.connecting import PollConnecting
from uringreactor.driver import Driver
from uringreactor.handle import CompletionIO
from uringreactor.messages import (
    CONTROL_SIZE,
    Ancillary,
    closeDescriptors,
    newMessage,
    receivedControl,
)
from uringreactor.operations import BUFFER_SHIFT, F_BUFFER, MSG_NOSIGNAL
from uringreactor.outcomes import receiveEnd
from uringreactor.receiving import RECV_BUFFER_SIZE, Receiver
from uringreactor.sending import Sender

_ENOBUFS = -errno.ENOBUFS


class MessageReceiver(Receiver):
    """
    Single recvmsg operations with room for control data, so that
    descriptors sent by the peer arrive with the bytes they were sent with;
    the data goes into a provided buffer where the reactor has them, else
    into a buffer of the receiver's own.  What it delivers is the bytes, or
    C{(bytes, ancillary)} when control data came with them.
    """

    __slots__ = ()

    def prepare(self, fd: int) -> None:
        ring = self.driver.ring
        buffers = self.driver.buffers
        memory = self.memory
        if memory is None:
            msg = newMessage()
            buf = None if buffers is not None else ffi.new("char[]", RECV_BUFFER_SIZE)
        else:
            msg, buf = memory
        if buffers is not None:
            ring.receiveMessage(
                fd,
                msg,
                None,
                buffers.bufferSize,
                0,
                CONTROL_SIZE,
                buffers.groupId,
                self,
            )
        else:
            ring.receiveMessage(
                fd, msg, buf, RECV_BUFFER_SIZE, 0, CONTROL_SIZE, -1, self
            )

    def completed(self, res: int, flags: int) -> None:
        """
        A recvmsg completed.
        """
        msg, buf = self.memory
        self.finished()
        buffers: Any = self.driver.buffers
        if res <= 0:
            if flags & F_BUFFER:
                buffers.recycle(flags >> BUFFER_SHIFT)
            if res == _ENOBUFS:
                buffers.shortage()
            why = receiveEnd(res)
            if why is not None:
                self.ended(why)
            else:
                # No data after all, or no free buffer this time round.
                self.rearm()
            return
        if flags & F_BUFFER:
            data = buffers.take(flags >> BUFFER_SHIFT, res)
        else:
            data = ffi.unpack(buf, res)
        ancillary = receivedControl(msg)
        self.received((data, ancillary) if ancillary else data)

    def lateAfterClose(self) -> Any:
        return functools.partial(_closeLateMessage, self.driver, self.memory[0])

    def close(self) -> list[Any] | None:
        held = super().close()
        # Descriptors received but never delivered are closed, not leaked.
        for item in held or ():
            if type(item) is tuple:
                closeDescriptors(item[1])
        return held


def _closeLateMessage(driver: Driver, msg: Any, res: int, flags: int) -> None:
    """
    A completion of a recvmsg cancelled because the transport closed: close
    any descriptor it brought, give its buffer back.
    """
    if res > 0:
        closeDescriptors(receivedControl(msg))
    driver.recycleLate(res, flags)


class MessageSender(Sender):
    """
    Sends along a UNIX stream the descriptors queued with
    C{sendFileDescriptor}: each leaves with one byte of the stream in its
    own sendmsg operation, in order with the rest of the stream, exactly as
    C{_SendmsgMixin.writeSomeData} sends it.
    """

    __slots__ = ()

    def flush(self) -> bool:
        transport = self.transport
        queue = transport._sendmsgQueue
        if not queue:
            return super().flush()
        if self.op is not None:
            return False
        pieces = self.leftover or []
        pieces.extend(transport._tempDataBuffer)
        length = self.leftoverLength + transport._tempDataLen
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
        self.leftover = pieces or None
        self.leftoverLength = length
        if len(queue) > length:
            # Each descriptor travels with one byte of the stream: more
            # descriptors than bytes is the same error as on epoll.
            self.driver.lose(transport, error.FileDescriptorOverrun(), False)
            return True
        first = pieces[0]
        byte = bytes(first[:1])
        if len(first) > 1:
            pieces[0] = memoryview(first)[1:]
        else:
            del pieces[0]
        self.leftover = pieces or None
        self.leftoverLength = length - 1
        self.op = self.driver.ring.sendMessage(
            transport.socket.fileno(),
            byte,
            None,
            queue[0],
            MSG_NOSIGNAL,
            False,
            self._descriptorSent,
        )
        self.length = 1
        return False

    def _descriptorSent(self, res: int, flags: int) -> None:
        op = self.op
        assert op is not None
        self.op = None
        self.length = 0
        if res == 1:
            del self.transport._sendmsgQueue[0]
        _, byte, _ = op.memory
        self.sent(res, 1, [byte])
        self._more()

    def completed(self, res: int, flags: int) -> bool:
        ranApplicationCode = super().completed(res, flags)
        self._more()
        return ranApplicationCode

    def _more(self) -> None:
        transport = self.transport
        if transport is None:
            # What was just sent let the application close the connection.
            return
        if transport._sendmsgQueue and self.op is None and not transport.disconnected:
            # Descriptors wait for bytes to travel with: flush again, which
            # sends them or reports the overrun, as epoll's next doWrite
            # would.
            transport.startWriting()


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

    def _newReceiver(self, driver: Any) -> Receiver:
        return MessageReceiver(self, driver)

    def _newSender(self, driver: Any) -> Sender:
        return MessageSender(self, driver)

    def _dataReceived(self, data: Any) -> Any:
        # What _SendmsgMixin.doRead does with what recvmsg returned (the
        # receiver delivers both forms): descriptors first, then the bytes
        # they came with.
        if type(data) is tuple:
            data, ancillary = data
            self._handleAncillary(ancillary)
        return super()._dataReceived(data)  # type: ignore[misc]

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

    def _isSendBufferFull(self) -> bool:
        return (
            len(self._sendmsgQueue) > self._fileDescriptorBufferSize
            or super()._isSendBufferFull()
        )


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
