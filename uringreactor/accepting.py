"""
Listening stream sockets (TCP and UNIX) fed by io_uring accept completions.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger
from twisted.python import failure, log

from uringreactor.logcontext import ContextEntry
from uringreactor.operations import F_MORE, Operation
from uringreactor.outcomes import ACCEPT_AGAIN, ACCEPT_EXHAUSTED

# How long a port waits before accepting again after running out of
# resources.
ACCEPT_RETRY_DELAY = 0.05

# Without multishot accept (before 5.19), how many more connections a port
# takes from its backlog with accept() after each accept completion, as
# epoll's Port.doRead does after each readiness event (its numberAccepts
# starts at 100): one accept operation per loop iteration would take a
# burst of connections one iteration at a time.
BACKLOG_BATCH = 100


class AcceptingPort:
    """
    Mixin for a C{twisted.internet.tcp.Port} subclass (TCP or UNIX) that
    accepts through io_uring: one multishot accept where the kernel has it,
    otherwise one accept at a time.
    """

    reactor: Any
    socket: socket.socket
    addressFamily: Any
    factory: Any
    sessionno: int
    transport: Any
    _shouldShutdown: bool
    # The accept operation in flight.
    _acceptOp: Operation | None = None
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
        self.reactor._driver.register(self)
        if self._acceptOp is None:
            self._armAccept()

    def _removedAsReader(self) -> None:
        # reactor.removeReader(port): stopReading already cancels the
        # accept in flight, leaving the socket alone.
        self.stopReading()

    def stopReading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        driver = self.reactor._driver
        driver.unregister(self)
        if self._retryCall is not None:
            self._retryCall.cancel()
            self._retryCall = None
        if self._acceptOp is not None:
            driver.ring.cancel(self._acceptOp, late=_closeLateAccept)
            self._acceptOp = None

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def _armAccept(self) -> None:
        ring = self.reactor._driver.ring
        self._acceptOp = ring.accept(
            self.socket.fileno(), "multishot_accept" in ring.features, self._accepted
        )

    def _accepted(self, res: int, flags: int) -> None:
        if not flags & F_MORE:
            self._acceptOp = None
        driver = self.reactor._driver
        if res >= 0:
            self._exhaustedLogged = False
            logContexts = driver.logContexts
            stack = logContexts.stack
            if stack is None:
                driver.call(self, self._newConnection, res)
            else:
                # Driver.call, inlined: this runs once per connection.
                stack.append(ContextEntry(self, logContexts.base))
                try:
                    self._newConnection(res)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err()
                finally:
                    stack.pop()
            if not flags & F_MORE:
                driver.call(self, self._acceptBacklog)
        elif -res in ACCEPT_AGAIN:
            pass
        else:
            # Out of resources, or unexpected: logged once, and the port
            # accepts again a little later, as epoll's does at its next
            # readiness (at once, an error that repeats would spin).
            driver.call(self, self._acceptFailed, -res)
            return
        if self._acceptOp is None and self._reading:
            self._armAccept()

    def _acceptBacklog(self) -> None:
        """
        A single-shot accept completed: take what else waits in the backlog
        (at most L{BACKLOG_BATCH}) before the next accept operation.  Errors
        stop the batch; the accept operation armed next meets them again and
        handles them.
        """
        for _ in range(BACKLOG_BATCH):
            if not self._reading or self._acceptOp is not None:
                return
            try:
                fd, _ = self.socket._accept()  # type: ignore[attr-defined]
            except OSError:
                return
            os.set_blocking(fd, False)
            self._newConnection(fd)

    def _acceptFailed(self, err: int) -> None:
        """
        accept() failed with C{err}: it ran out of descriptors or memory, or
        something unexpected happened.  When out of descriptors, close what
        is waiting in the backlog if a reserved descriptor lets us (as the
        epoll reactor does), so those clients are not left hanging.  Then
        try again a little later.  Logged once per episode (until the port
        accepts again), not at every retry.
        """
        if not self._exhaustedLogged:
            self._exhaustedLogged = True
            if err in ACCEPT_EXHAUSTED:
                self._logger.info(
                    "Could not accept new connection ({acceptError})",
                    acceptError=errno.errorcode[err],
                )
            else:
                log.err(
                    OSError(err, os.strerror(err)), "Could not accept new connection"
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
        if self._reading and self._acceptOp is None and self._retryCall is None:
            self._retryCall = self.reactor.callLater(
                ACCEPT_RETRY_DELAY, self._retryAccept
            )

    def _retryAccept(self) -> None:
        self._retryCall = None
        if self._reading and self._acceptOp is None:
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
            if self.addressFamily == socket.AF_INET6:
                host = socket.getnameinfo(
                    addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
                )
                addr = tuple([host[0]] + list(addr[1:]))
            factory: Any = self.factory
            protocol = factory.buildProtocol(
                self._buildAddr(addr)  # type: ignore[attr-defined]
            )
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
        super().connectionLost(reason)  # type: ignore[misc]

    def _closeSocket(self, orderly: bool) -> None:
        skt = self.socket
        try:
            if orderly and self._shouldShutdown:
                skt.shutdown(2)
        except OSError:
            pass
        self.reactor._driver.ring.closeAfterSubmit(skt, immediately=True)


def _closeLateAccept(res: int, flags: int) -> None:
    """
    A connection accepted by an accept operation that was being cancelled:
    nobody will serve it, so close it.
    """
    if res >= 0:
        os.close(res)
