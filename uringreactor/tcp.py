"""
TCP over io_uring: listening ports fed by accept completions, connections
whose reads and writes are io_uring operations.

The classes extend Twisted's own L{twisted.internet.tcp} classes, so
addresses, options (C{setTcpNoDelay}, C{setTcpKeepAlive}), half-close,
C{abortConnection}, TLS (C{startTLS} and the TLS memory BIO used by
C{listenSSL}/C{connectSSL}), logging and error reporting are Twisted's; only
the I/O underneath changes (see L{uringreactor.handle}).
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from twisted.internet import error, tcp
from twisted.logger import Logger
from twisted.python import failure, log

from uringreactor._liburing import lib
from uringreactor.handle import CompletionIO
from uringreactor.ring import F_MORE, KIND_ACCEPT, KIND_POLL

_ACCEPT_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

# accept() errors after which the port accepts again at once.
_ACCEPT_RETRY = {
    errno.EAGAIN,
    errno.EPERM,
    errno.ECONNABORTED,
    errno.EINTR,
    errno.EPROTO,
    errno.ENETDOWN,
    errno.ENOPROTOOPT,
    errno.EHOSTDOWN,
    errno.ENONET,
    errno.EHOSTUNREACH,
    errno.EOPNOTSUPP,
    errno.ENETUNREACH,
}

# accept() errors that mean resources ran out: the port logs, waits a little
# and accepts again.
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# How long a port waits before accepting again after running out of
# resources.
ACCEPT_RETRY_DELAY = 0.05


class Connection(CompletionIO, tcp.Connection):
    """
    A TCP connection driven by io_uring completions.
    """


class Server(CompletionIO, tcp.Server):
    """
    The server side of an accepted TCP connection.
    """

    _base = Connection


class Client(CompletionIO, tcp.Client):
    """
    The client side of a TCP connection made by C{connectTCP}.

    Connecting is C{connect()} on the non-blocking socket followed by an
    io_uring poll for writability, so failures are reported exactly as on
    epoll (C{SO_ERROR} mapped by L{twisted.internet.error.getConnectError}).
    """

    _base = Connection
    _commonConnection = Connection
    _connectOp = 0

    def doConnect(self) -> None:
        """
        Start (or, once the socket is writable, finish) the connection.
        """
        if not hasattr(self, "connector"):
            # The attempt failed or was stopped while this call was queued.
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))
            return
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result and result != errno.EISCONN:
            if result in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                self._waitWritable()
            else:
                self.failIfNotConnected(
                    error.getConnectError((result, os.strerror(result)))
                )
            return
        self._connectDone()

    def _waitWritable(self) -> None:
        ring = self.reactor._ring
        ud = ring.newOp(KIND_POLL, self._writable)
        rc = lib.ur_prep_poll(ring._ptr, self.socket.fileno(), select.POLLOUT, 0, ud)
        if rc < 0:
            ring.abandon(ud, rc)
        self._connectOp = ud

    def _writable(self, res: int, flags: int) -> None:
        self._connectOp = 0
        if res < 0:
            self.failIfNotConnected(error.getConnectError((-res, os.strerror(-res))))
        else:
            self.reactor._logContexts.call(self, self.doConnect)

    def _stopReadingAndWriting(self) -> None:
        if self._connectOp:
            self.reactor._ring.cancel(self._connectOp)
            self._connectOp = 0
        super()._stopReadingAndWriting()


class Port(tcp.Port):
    """
    A listening TCP port that accepts through io_uring: one multishot
    accept where the kernel has it, otherwise one accept at a time.
    """

    transport = Server
    _acceptOp = 0
    # Accepting, for the reactor's getReaders(); a port never writes.
    _reading = False
    _writing = False
    _retryCall: Any = None
    _exhaustedLogged = False
    _uringHandle = True
    _logger = Logger()

    def startReading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self.reactor._handles.add(self)
        if not self._acceptOp:
            self._armAccept()

    def stopReading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        self.reactor._handles.discard(self)
        if self._retryCall is not None:
            self._retryCall.cancel()
            self._retryCall = None
        if self._acceptOp:
            self.reactor._ring.cancel(self._acceptOp, late=_closeLateAccept)
            self._acceptOp = 0

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def _armAccept(self) -> None:
        reactor = self.reactor
        ring = reactor._ring
        multishot = "multishot_accept" in ring.features
        ud = ring.newOp(KIND_ACCEPT, self._accepted)
        rc = lib.ur_prep_accept(
            ring._ptr,
            self.socket.fileno(),
            reactor._ffi.NULL,
            reactor._ffi.NULL,
            _ACCEPT_FLAGS,
            1 if multishot else 0,
            ud,
        )
        if rc < 0:
            ring.abandon(ud, rc)
        self._acceptOp = ud

    def _accepted(self, res: int, flags: int) -> None:
        if not flags & F_MORE:
            self._acceptOp = 0
        if res >= 0:
            self._exhaustedLogged = False
            self.reactor._logContexts.call(self, self._newConnection, res)
        elif -res in _ACCEPT_RETRY:
            pass
        elif -res in _ACCEPT_EXHAUSTED:
            self.reactor._logContexts.call(self, self._exhausted, -res)
            return
        else:
            self.reactor._logContexts.call(
                self,
                log.err,
                OSError(-res, os.strerror(-res)),
                "Could not accept new connection",
            )
            return
        if not self._acceptOp and self._reading:
            self._armAccept()

    def _exhausted(self, err: int) -> None:
        """
        accept() ran out of descriptors or memory.  Close what is waiting in
        the backlog when a reserved descriptor lets us (as the epoll reactor
        does), so those clients are not left hanging, then try again a
        little later.  Logged once per episode, not at every retry.
        """
        if not self._exhaustedLogged:
            self._exhaustedLogged = True
            self._logger.info(
                "Could not accept new connection ({acceptError})",
                acceptError=errno.errorcode[err],
            )
        if err == errno.EMFILE and tcp._reservedFD.available():
            with tcp._reservedFD:
                for client, address in tcp._accept(
                    self._logger, range(100), self.socket, tcp._reservedFD
                ):
                    client.close()
                    self._logger.info(
                        "EMFILE recovery: Closed socket from {address}",
                        address=address,
                    )
        if self._reading and not self._acceptOp and self._retryCall is None:
            self._retryCall = self.reactor.callLater(
                ACCEPT_RETRY_DELAY, self._retryAccept
            )

    def _retryAccept(self) -> None:
        self._retryCall = None
        if self._reading and not self._acceptOp:
            self._armAccept()

    def _newConnection(self, fd: int) -> None:
        """
        Wrap an accepted descriptor in a transport and connect its protocol,
        as C{tcp.Port.doRead} does for each accepted socket.
        """
        try:
            skt = socket.socket(self.addressFamily, socket.SOCK_STREAM, 0, fd)
        except OSError:
            os.close(fd)
            raise
        try:
            try:
                addr = skt.getpeername()
            except OSError:
                # The client reset the connection before we got to it.
                skt.close()
                return
            if len(addr) == 4:
                host = socket.getnameinfo(
                    addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
                )
                addr = tuple([host[0]] + list(addr[1:]))
            factory: Any = self.factory
            protocol = factory.buildProtocol(self._buildAddr(addr))
            if protocol is None:
                skt.close()
                return
            s = self.sessionno
            self.sessionno = s + 1
            transport = self.transport(skt, protocol, addr, self, s, self.reactor)
            protocol.makeConnection(transport)
        except BaseException:
            log.deferr()

    def connectionLost(self, reason: failure.Failure) -> None:
        self.stopReading()
        super().connectionLost(reason)

    def _closeSocket(self, orderly: bool) -> None:
        skt = self.socket
        try:
            if orderly and self._shouldShutdown:
                skt.shutdown(2)
        except OSError:
            pass
        self.reactor._ring.closeAfterSubmit(skt)


def _closeLateAccept(res: int, flags: int) -> None:
    """
    A connection accepted by an accept operation that was being cancelled:
    nobody will serve it, so close it.
    """
    if res >= 0:
        os.close(res)


class Connector(tcp.Connector):
    """
    Connects a client factory to a TCP address through L{Client}.
    """

    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)
