"""
Client connection set-up shared by the TCP and UNIX stream clients.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from twisted.internet import error

from uringreactor.operations import Operation


class PollConnecting:
    """
    Mixin for a C{twisted.internet.tcp.BaseClient} subclass: connecting is
    C{connect()} on the non-blocking socket followed by an io_uring poll for
    writability, so failures are reported exactly as on epoll (C{SO_ERROR}
    mapped by L{twisted.internet.error.getConnectError}).
    """

    reactor: Any
    socket: socket.socket
    realAddress: Any
    # The poll for writability in flight.
    _connectOp: Operation | None = None

    def doConnect(self) -> None:
        """
        Start (or, once the socket is writable, finish) the connection.
        """
        if not hasattr(self, "connector"):
            # The attempt failed or was stopped while this call was queued.
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(  # type: ignore[attr-defined]
                error.getConnectError((err, os.strerror(err)))
            )
            return
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result and result != errno.EISCONN:
            if result in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                self._waitWritable()
            else:
                self.failIfNotConnected(  # type: ignore[attr-defined]
                    error.getConnectError((result, os.strerror(result)))
                )
            return
        self._connectDone()  # type: ignore[attr-defined]

    def _waitWritable(self) -> None:
        self._connectOp = self.reactor._driver.ring.poll(
            self.socket.fileno(), select.POLLOUT, self._writable
        )

    def _writable(self, res: int, flags: int) -> None:
        self._connectOp = None
        if res < 0:
            self.failIfNotConnected(  # type: ignore[attr-defined]
                error.getConnectError((-res, os.strerror(-res)))
            )
        else:
            self.reactor._driver.call(self, self.doConnect)

    def _stopReadingAndWriting(self) -> None:
        if self._connectOp is not None:
            self.reactor._driver.ring.cancel(self._connectOp)
            self._connectOp = None
        super()._stopReadingAndWriting()  # type: ignore[misc]
