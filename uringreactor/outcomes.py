"""
What a failed operation means, in one place: for each kind of operation the
reactor submits, the errors after which the epoll reactor would try again,
lose the connection (and with which Twisted error), or log and go on.  Every
transport asks here, so that a completion's error gets the treatment the
same error gets from the system call epoll's reactor makes.

The references on the epoll side:

  - stream sends, C{tcp.Connection.writeSomeData}: C{EWOULDBLOCK} and
    C{ENOBUFS} mean nothing was sent, try again; anything else is
    C{CONNECTION_LOST};
  - stream receives, C{tcp.Connection.doRead}: C{EWOULDBLOCK}, C{EAGAIN} and
    C{EINTR} mean read again later; end of file is C{CONNECTION_DONE},
    anything else C{CONNECTION_LOST};
  - accepts, C{tcp._accept} and C{tcp.Port.doRead}: C{EAGAIN} means none
    left, C{EPERM} (a netfilter refusal) go on; C{EMFILE}, C{ENFILE},
    C{ENOBUFS}, C{ENOMEM} and C{ECONNABORTED} are logged, anything else is
    logged as an unexpected error; in every case the port accepts again at
    its next readiness;
  - datagram receives, C{udp.Port.doRead}: C{ECONNREFUSED} on a connected
    port calls C{connectionRefused}, the errors of C{_sockErrReadIgnore}
    mean read again, anything else is logged;
  - datagram sends, C{udp.Port.write}: C{ECONNREFUSED} on a connected port
    calls C{connectionRefused}, anything else is logged.
"""

from __future__ import annotations

import errno

from twisted.internet import main

# -- streams ----------------------------------------------------------------

# Errors of a send after which the same bytes are sent again.
SEND_AGAIN = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.EINTR))

# Errors of a receive after which it is simply armed again.  (ENOBUFS: no
# provided buffer was free; the buffer ring grows, see BufferRing.shortage.)
RECEIVE_AGAIN = frozenset((errno.EAGAIN, errno.EINTR, errno.ENOBUFS))


def sendFailure(err: int) -> Exception | None:
    """
    What a stream send that failed with C{err} (a positive errno) means:
    L{None} to send the same bytes again, or why the connection is lost.
    """
    if err in SEND_AGAIN:
        return None
    return main.CONNECTION_LOST


def receiveEnd(res: int) -> Exception | None:
    """
    What a stream receive that completed with C{res <= 0} means: L{None} to
    receive again, or why reading ended (end of file, C{CONNECTION_DONE};
    an error, C{CONNECTION_LOST}).
    """
    if res == 0:
        return main.CONNECTION_DONE
    if -res in RECEIVE_AGAIN:
        return None
    return main.CONNECTION_LOST


# -- accepting ----------------------------------------------------------------

# accept() errors after which the port accepts again at once.
ACCEPT_AGAIN = frozenset(
    (
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
    )
)

# accept() errors that mean resources ran out: the port logs (once until it
# accepts again), waits a little and accepts again.
ACCEPT_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

# Any other accept() error is unexpected: logged once until the port
# accepts again, and the port accepts again after the same short wait (an
# error that repeats at once would otherwise spin).

# -- datagrams ------------------------------------------------------------------

# Receive errors after which a datagram port simply receives again (epoll's
# doRead stops reading until the next readiness event on these).
DATAGRAM_RECEIVE_AGAIN = frozenset(
    (
        errno.EAGAIN,
        errno.EINTR,
        errno.ENOBUFS,
        errno.ECONNREFUSED,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ECONNRESET,
        errno.EPROTO,
    )
)
