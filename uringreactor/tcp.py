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

from typing import Any

from twisted.internet import tcp

from uringreactor.accepting import AcceptingPort
from uringreactor.connecting import PollConnecting
from uringreactor.handle import CompletionIO


class Connection(CompletionIO, tcp.Connection):
    """
    A TCP connection driven by io_uring completions.
    """


class Server(CompletionIO, tcp.Server):
    """
    The server side of an accepted TCP connection.
    """

    _base = Connection
    # The local address, which an accepted socket keeps for its lifetime.
    _sockname: Any = None

    def getHost(self) -> Any:
        """
        The local address, as L{tcp.Server.getHost} gives it, asking the
        kernel only once: twisted.web asks for every request.
        """
        # After the connection is lost there is no socket, and this raises
        # as it does on epoll.
        skt = self.socket
        sockname = self._sockname
        if sockname is None:
            sockname = self._sockname = tcp._getsockname(skt)
        return self._addressType("TCP", *sockname)


class Client(PollConnecting, CompletionIO, tcp.Client):
    """
    The client side of a TCP connection made by C{connectTCP}.
    """

    _base = Connection
    _commonConnection = Connection


class Port(AcceptingPort, tcp.Port):
    """
    A listening TCP port that accepts through io_uring.
    """

    transport = Server


class Connector(tcp.Connector):
    """
    Connects a client factory to a TCP address through L{Client}.
    """

    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)
