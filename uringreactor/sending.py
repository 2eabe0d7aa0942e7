"""
The send side of a stream transport.

Writing keeps C{FileDescriptor}'s buffer (C{_tempDataBuffer}, a list of
C{bytes}) so that C{FileDescriptor.write} and C{writeSequence}, which
Twisted's TLS layer calls directly, work unchanged.  Once per event-loop
iteration the reactor asks each transport with pending output to flush,
and its L{Sender} sends the whole list as one vectored send, without
joining it.

A sender is C{IDLE} (no send in flight) or C{SENDING}: L{Sender.op} is the
one send in flight, which owns the pieces it sends until it completes.
With one send at a time bytes never reorder; a partial send continues
from where it stopped, and what waits meanwhile is L{Sender.leftover}.
A sender that has sent everything, with nobody waiting for that, leaves
its transport (L{Sender.release}) for the next one that writes: an idle
connection holds no send side.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

from uringreactor.operations import _BYTES_STAY_PUT, MSG_NOSIGNAL, Operation
from uringreactor.outcomes import sendFailure

if TYPE_CHECKING:
    from uringreactor.driver import Driver

# The most buffers one vectored send takes (Linux's IOV_MAX).
IOV_MAX = 1024

# Buffered output smaller than this goes out as one joined copy rather than
# a vectored send: below it the copy is cheaper than building the iovec.
_JOIN_BELOW = 16384

# Output up to this size, from the only transport writing in an iteration,
# is sent with send() rather than through the ring (see Sender.flush).
_DIRECT_BELOW = 65536

# Where a send through the ring must copy its data (PyPy: see
# uringreactor.operations._keepable), output of at least this size never
# goes through the ring: it goes to send() (or sendmsg(), for several
# pieces) at once, and what does not fit waits for room in the socket's
# buffer (a poll) and goes the same way, as on epoll.  Above this size the
# ring's copy costs more than the system call it would have saved (under
# PyPy 7.3, copying 64 KiB into cffi memory takes 22 us, pinning a fresh
# 64 KiB bytes object for the kernel 150 us).  (None where nothing is
# copied.)
_DIRECT_FROM = None if _BYTES_STAY_PUT else 16384
_POLLOUT = select.POLLOUT


# The most idle senders a driver keeps (see Sender.release): enough for
# every connection of a busy server to write in one iteration without
# making a new one, few enough that idle connections cost nothing.
_IDLE_SENDERS = 1024


def coalesce(pieces: list[Any], length: int) -> list[Any]:
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


def remainder(pieces: list[Any], sent: int) -> list[Any]:
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


class Sender(Operation):
    """
    Sends for one stream transport (see the module's docstring), and the
    operation object that carries each of its sends, one at a time: the
    ring holds it, with the pieces being sent as its memory, while a send
    is in flight.  A cancelled send keeps that memory until the kernel lets
    go; the sender never sends again.

    @ivar transport: the transport, an L{uringreactor.handle.CompletionIO};
        L{None} while idle in the driver's pool, and once closed.
    @ivar op: the send in flight (this sender for a plain send), the poll
        for room in the socket's buffer (see L{_sendNow}), or L{None}.
    @ivar length: its length.
    @ivar leftover: pieces waiting for it (the rest of a partial send, or
        what did not fit in one vectored send), or L{None}.
    @ivar leftoverLength: their length.
    """

    __slots__ = ("transport", "driver", "op", "length", "leftover", "leftoverLength")

    def __init__(self, transport: Any, driver: Driver) -> None:
        # Operation.__init__, inlined.  No handler: the ring calls
        # completed() itself (see Operation).
        self.tag = 0
        self.handler = None
        self.memory = None
        self.transport = transport
        self.driver = driver
        self.op: Operation | None = None
        self.length = 0
        self.leftover: list[Any] | None = None
        self.leftoverLength = 0

    @property
    def pending(self) -> int:
        """
        The bytes given to the sender and not sent yet.
        """
        return self.length + self.leftoverLength

    def flush(self) -> bool:
        """
        Send what the transport buffered, after what waited already; or, if
        nothing is left, conclude (C{FileDescriptor.doWrite}'s end).

        @return: C{True} if application code ran.
        """
        if self.op is not None or self.memory is not None:
            # A send in flight: sent() asks for another flush when it is
            # in.  (Memory held without one: a cancelled send, at close.)
            return False
        transport = self.transport
        pieces = self.leftover
        length = self.leftoverLength
        if transport._tempDataBuffer:
            if pieces is None:
                pieces = transport._tempDataBuffer
            else:
                pieces.extend(transport._tempDataBuffer)
            length += transport._tempDataLen
            transport._tempDataBuffer = []
            transport._tempDataLen = 0
        if not pieces:
            self.leftover = None
            self.leftoverLength = 0
            transport._drained()
            return True
        if len(pieces) > IOV_MAX:
            self.leftover = pieces[IOV_MAX:]
            pieces = pieces[:IOV_MAX]
            sendLength = sum(map(len, pieces))
            self.leftoverLength = length - sendLength
            length = sendLength
        else:
            self.leftover = None
            self.leftoverLength = 0
        # Send them (in this method, not another: this runs once per
        # request).
        driver = self.driver
        if len(pieces) > 1:
            pieces = coalesce(pieces, length)
        if _DIRECT_FROM is not None and length >= _DIRECT_FROM:
            return self._sendNow(pieces, length)
        if len(pieces) == 1 and (
            length <= _DIRECT_BELOW
            and (
                driver.sendDirectly
                or transport.disconnecting
                or transport._writeDisconnecting
            )
        ):
            # The only transport with output this iteration (a
            # request-response exchange): one send() now costs the same
            # system call as the io_uring_enter that would submit it, and
            # saves its completion, which would otherwise wake the loop
            # once more before the next request.  Or the last output of a
            # connection that is closing (a response with Connection:
            # close): sent now, the connection shuts down in this same
            # iteration, before the peer has read the response and closed
            # first, as on epoll; later, the peer's close would have come
            # first and the server would pay for the TIME_WAIT socket (the
            # side that shuts down last processes it, inside shutdown()).
            try:
                sent = transport.socket.send(pieces[0], MSG_NOSIGNAL)
            except OSError as e:
                why = sendFailure(e.errno or 0)
                if why is not None:
                    driver.lose(transport, why, False)
                    return True
                sent = 0
            if sent == length:
                return self.sent(length, length, pieces)
            pieces = remainder(pieces, sent)
            length -= sent
        driver.ring.send(transport.fileno(), pieces, length, self)
        self.op = self
        self.length = length
        return False

    def _sendNow(self, pieces: list[Any], length: int) -> bool:
        """
        Send C{pieces} (C{length} bytes, after which C{leftover} waits)
        with send() or sendmsg() now, not through the ring (see
        C{_DIRECT_FROM}); what does not fit waits for a poll to report
        room, then goes the same way.

        @return: C{True} if application code ran.
        """
        transport = self.transport
        try:
            if len(pieces) == 1:
                sent = transport.socket.send(pieces[0], MSG_NOSIGNAL)
            else:
                sent = transport.socket.sendmsg(pieces, (), MSG_NOSIGNAL)
        except OSError as e:
            why = sendFailure(e.errno or 0)
            if why is not None:
                self.driver.lose(transport, why, False)
                return True
            sent = 0
        if sent == length:
            return self.sent(length, length, pieces)
        rest = remainder(pieces, sent)
        if self.leftover:
            rest.extend(self.leftover)
        self.leftover = rest
        self.leftoverLength += length - sent
        self.op = self.driver.ring.poll(transport.fileno(), _POLLOUT, self._room)
        return False

    def _room(self, res: int, flags: int) -> None:
        """
        The socket has room again (or an error, which the send it now
        makes reports): send what waits.
        """
        self.op = None
        self.transport.startWriting()

    def completed(self, res: int, flags: int) -> bool:
        """
        The send in flight completed.

        @return: C{True} if that ran application code.
        """
        op = self.op
        assert op is not None
        length = self.length
        self.op = None
        self.length = 0
        pieces = op.memory[0]
        # The kernel is done with it.
        op.memory = None
        return self.sent(res, length, pieces)

    def sent(self, res: int, length: int, pieces: list[Any]) -> bool:
        """
        C{res} bytes (or an error) of a send of C{length} bytes from
        C{pieces} have gone: send the rest, or conclude.

        @return: C{True} if that ran application code.
        """
        transport = self.transport
        if res == length:
            if self.leftover or transport._tempDataBuffer:
                transport.startWriting()
                return False
            if (
                transport.producer is None
                and not transport.disconnecting
                and not transport._writeDisconnecting
            ):
                # Drained, and nobody waits for that (_allSent, inlined:
                # this runs once per request).
                transport._writing = False
                if type(self) is Sender and not transport._flushQueued:
                    # Nothing of the send side is left: the transport lets
                    # it go, so that an idle connection holds none.
                    self.release()
                return False
            return transport._allSent()  # type: ignore[no-any-return]
        if res < 0:
            why = sendFailure(-res)
            if why is None:
                self.requeue(pieces, length)
                return False
            self.driver.lose(transport, why, False)
            return True
        self.requeue(remainder(pieces, res), length - res)
        return False

    def release(self) -> None:
        """
        Leave the transport, idle (nothing in flight, nothing waiting), for
        the driver to give to the next transport that writes.
        """
        self.transport._sender = None
        self.transport = None
        pool = self.driver.idleSenders
        if len(pool) < _IDLE_SENDERS:
            pool.append(self)

    def requeue(self, pieces: list[Any], length: int) -> None:
        """
        Send C{pieces} first, at the next flush.
        """
        if self.leftover:
            pieces.extend(self.leftover)
        self.leftover = pieces
        self.leftoverLength += length
        self.transport.startWriting()

    def close(self) -> None:
        """
        The transport is closing: cancel the send in flight (its memory
        stays the kernel's until it completes) and drop what waits.
        """
        op = self.op
        if op is not None:
            self.op = None
            # Its memory stays with it, in the ring's table, until the
            # kernel lets go.
            self.driver.ring.cancel(op)
        self.length = 0
        self.leftover = None
        self.leftoverLength = 0
        if (
            op is None
            and self.memory is None
            and type(self) is Sender
            and self.transport is not None
        ):
            # Nothing in flight: the next connection that writes may take
            # this sender, rather than each connection making its own.
            self.release()
        else:
            # As a closed receiver does (see Receiver.close): no reference
            # cycle outlives the connection.
            self.transport = None
