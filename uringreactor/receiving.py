"""
The receive side of a stream transport.

A L{Receiver} keeps one receive operation in flight while its transport's
protocol wants data, and delivers what it brings; what arrives while the
protocol does not is held and delivered, in order, when it wants data
again.  Nothing is re-armed while reading is paused, so the kernel's
receive buffer fills and TCP flow control pushes back on the peer.

A receiver has at most one receive in flight, and is itself that
operation's L{Operation} (its tag, its handler, and the memory the kernel
writes into), so a receive allocates nothing, and a cancelled receive
keeps the receiver, with that memory, in the ring's table until its final
completion.  Its state is explicit (L{Receiver.state}):

  - C{IDLE}: no receive in flight;
  - C{ARMED}: the receive is in flight; its data is delivered while
    reading, held while paused;
  - C{DRAINING}: a multishot receive was cancelled because data arrived
    while reading was paused; its last completions may still bring data,
    which is held too, and nothing is armed until the final one, so data
    cannot reorder;
  - C{CLOSED}: the transport is gone; nothing is armed again.

Held data exists only while no receive is armed (C{IDLE} or
C{DRAINING}): a receive is armed only once what is held has been
delivered.  So data delivered at once from a completion never overtakes
held data.

Four strategies, one class each, differ only in the operation they arm
and how its completion is read: L{BufferReceiver} (a multishot receive
into the reactor's provided buffers), L{CopyingBufferReceiver} (the same
where reads are copied out of the buffers, as under PyPy, reading bulk
transfers with recv() on readiness instead), L{OwnBufferReceiver} (single
receives into a buffer of its own, where the kernel has no provided
buffers) and, in L{uringreactor.unix}, recvmsg with room for passed
descriptors.  All of them deliver through L{Receiver.deliver}.
"""

from __future__ import annotations

import array
import errno
import fcntl
import select
import sys
import termios
from typing import TYPE_CHECKING, Any

from twisted.python import log

from uringreactor._liburing import ffi
from uringreactor.bufferring import HANDS_OVER
from uringreactor.logcontext import ContextEntry
from uringreactor.operations import BUFFER_SHIFT, F_BUFFER, F_MORE, Operation
from uringreactor.outcomes import receiveEnd

if TYPE_CHECKING:
    from uringreactor.driver import Driver

IDLE = 0
ARMED = 1
DRAINING = 2
CLOSED = 3

# Receive buffer of a transport that has no provided buffer ring to use.
RECV_BUFFER_SIZE = 65536

_ENOBUFS = -errno.ENOBUFS
_ECANCELED = -errno.ECANCELED
_POLLIN = select.POLLIN
# FIONREAD's answer (see bytesWaiting): the loop's one thread asks.
_PENDING = array.array("i", [0])
_unpack = ffi.unpack


class Receiver(Operation):
    """
    Receives for one stream transport (see the module's docstring), and the
    operation object of the one receive it has in flight.

    @ivar transport: the transport: a C{FileDescriptor} with C{socket},
        C{disconnected} and C{_dataReceived} (which hands data to the
        protocol and returns a reason to disconnect, or L{None}); L{None}
        once closed.
    @ivar state: C{IDLE}, C{ARMED}, C{DRAINING} or C{CLOSED}.
    @ivar reading: whether the protocol wants data.
    @ivar held: data that arrived while the protocol did not want it, in
        order; or L{None}.
    @ivar heldEnd: why the stream ended, once that is known but not yet
        reported (it comes after the held data); or L{None}.
    """

    __slots__ = (
        "transport",
        "driver",
        "state",
        "reading",
        "held",
        "heldEnd",
        "deliverCall",
    )

    def __init__(self, transport: Any, driver: Driver) -> None:
        # Operation.__init__, inlined (one per connection).  No handler: the
        # ring calls completed() itself (see Operation).
        self.tag = 0
        self.handler = None
        self.memory = None
        self.transport = transport
        self.driver = driver
        self.state = IDLE
        self.reading = False
        self.held: list[Any] | None = None
        self.heldEnd: BaseException | None = None
        self.deliverCall: Any = None

    def prepare(self, fd: int) -> None:
        """
        Prepare the receive on C{fd}, carried by this receiver.
        """
        raise NotImplementedError

    def completed(self, res: int, flags: int) -> None:
        """
        A completion of the receive in flight.
        """
        raise NotImplementedError

    def lateAfterClose(self) -> Any:
        """
        The handler for what a receive cancelled at close still completes
        with (see L{uringreactor.ring.Ring.cancel}), or L{None}.
        """
        return None

    # -- what the transport asks ------------------------------------------

    def start(self) -> None:
        """
        The protocol wants data (again): deliver what is held, or receive.
        """
        if self.reading or self.state == CLOSED:
            return
        self.reading = True
        if self.state == DRAINING:
            # Resumes when the cancelled receive's last completion is in.
            return
        if self.held is not None or self.heldEnd is not None:
            # Later, never from inside the caller (which may be the
            # protocol's own dataReceived).
            self._deliverLater()
        elif self.state == IDLE:
            self.arm()

    def pause(self) -> None:
        """
        The protocol wants no data for now.  A receive in flight stays
        armed (subclasses may cancel it when data does arrive).
        """
        if not self.reading:
            return
        self.reading = False
        if self.deliverCall is not None:
            self.deliverCall.cancel()
            self.deliverCall = None

    def stop(self) -> None:
        """
        Application code removed the transport as a reader
        (C{reactor.removeReader}): as on epoll, the socket must then be left
        alone, since something else may read it (a descriptor adopted
        elsewhere, handed to a child).  Pause, and cancel the receive in
        flight; what it still brings is held, in order.
        """
        self.pause()
        if self.state == ARMED:
            self._cancelWhileStopped()

    def _cancelWhileStopped(self) -> None:
        """
        Cancel the single receive in flight; its completion, if it brings
        data after all, is handled as usual (held, since reading is paused).
        """
        self.driver.ring.cancel(self, late=self._lateAfterStop)

    def _lateAfterStop(self, res: int, flags: int) -> None:
        """
        The completion of the receive cancelled by L{stop}.
        """
        if self.state == CLOSED:
            late = self.lateAfterClose()
            if late is not None:
                late(res, flags)
            return
        if res != _ECANCELED:
            self.completed(res, flags)
            return
        self.finished()
        if self.reading and not self.transport.disconnected:
            # start() waited for this completion: do what it would have.
            if self.held is not None or self.heldEnd is not None:
                self._deliverLater()
            else:
                self.rearm()

    def close(self) -> list[Any] | None:
        """
        The transport is closing: cancel the receive in flight (its late
        completions never reach the protocol) and drop what is held.

        @return: what was held.
        """
        if self.state == ARMED:
            self.driver.ring.cancel(self, late=self.lateAfterClose())
        self.state = CLOSED
        self.reading = False
        if self.deliverCall is not None:
            self.deliverCall.cancel()
            self.deliverCall = None
        held, self.held = self.held, None
        self.heldEnd = None
        # The transport refers to its receiver; the receiver lets go of the
        # transport, so that a closed connection is freed as soon as it is
        # dropped, not by the garbage collector (a connection per request
        # would otherwise leave a reference cycle per request).  Nothing
        # reaches the transport from a closed receiver.
        self.transport = None
        return held

    # -- operations -------------------------------------------------------

    def arm(self) -> None:
        """
        Put a receive in flight.
        """
        try:
            fd = self.transport.socket.fileno()
        except AttributeError:
            # The connection is gone already.
            return
        # (A receive cancelled while paused left its handler swapped.)
        self.handler = None
        self.prepare(fd)
        self.state = ARMED

    def finished(self) -> None:
        """
        The receive in flight has had its final completion.
        """
        if self.state == ARMED:
            self.state = IDLE

    def rearm(self) -> None:
        """
        After a final completion: receive again if the protocol still wants
        data and nothing is held.
        """
        if (
            self.state == IDLE
            and self.reading
            and self.held is None
            and not self.transport.disconnected
        ):
            self.arm()

    # -- delivery ---------------------------------------------------------

    def deliver(self, data: Any) -> None:
        """
        Hand C{data} to the protocol within its log context; an exception
        from the protocol, or a reason returned, disconnects it, as on
        epoll.  Every receive strategy delivers through here.
        """
        transport = self.transport
        logContexts = self.driver.logContexts
        stack = logContexts.stack
        if stack is None:
            logContexts.call(transport, self._deliverInContext, data)
            return
        # LogContexts.call and _deliverInContext, inlined: this runs once
        # per read.
        stack.append(ContextEntry(transport, logContexts.base))
        try:
            try:
                why = transport._dataReceived(data)
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                self.driver.lose(transport, why, True)
        finally:
            stack.pop()

    def _deliverInContext(self, data: Any) -> None:
        # deliver's body where another context tracker is in use.
        try:
            why = self.transport._dataReceived(data)
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.driver.lose(self.transport, why, True)

    def received(self, data: Any) -> None:
        """
        A single receive's data: deliver it, or hold it while reading is
        paused, and keep receiving.
        """
        if self.reading:
            self.deliver(data)
            self.rearm()
        else:
            self.hold(data)

    def hold(self, data: Any) -> None:
        if self.held is None:
            self.held = [data]
        else:
            self.held.append(data)

    def ended(self, why: BaseException) -> None:
        """
        The stream ended (end of file or an error): report it now if the
        protocol reads, else after the held data.
        """
        if self.reading:
            self.driver.lose(self.transport, why, True)
        elif self.heldEnd is None:
            self.heldEnd = why

    def _deliverLater(self) -> None:
        if self.deliverCall is None:
            self.deliverCall = self.driver.callLater(0, self._deliverHeld)

    def _deliverHeld(self) -> None:
        self.deliverCall = None
        if self.state == DRAINING:
            return
        transport = self.transport
        held = self.held
        while held and self.reading and not transport.disconnected:
            self.deliver(held.pop(0))
        if self.held is not None and not self.held:
            self.held = None
        if not self.reading or transport.disconnected or self.held:
            return
        if self.heldEnd is not None:
            why, self.heldEnd = self.heldEnd, None
            self.driver.lose(transport, why, True)
        else:
            self.rearm()


class BufferReceiver(Receiver):
    """
    One multishot receive into the reactor's provided buffers: armed once,
    it takes a buffer only when data arrives, so an idle connection holds
    no memory.  It stays armed while reading is paused (protocols that
    pause while they work on a request, twisted.web for every request,
    usually resume before the peer sends more); data that does arrive
    meanwhile is held and the receive cancelled (C{DRAINING}).
    """

    __slots__ = ()

    def prepare(self, fd: int) -> None:
        driver = self.driver
        assert driver.buffers is not None
        driver.ring.receiveMultishot(fd, driver.buffers.groupId, self)

    def lateAfterClose(self) -> Any:
        return self.driver.recycleLate

    def completed(self, res: int, flags: int) -> None:
        """
        A completion of the multishot receive.
        """
        if res > 0 and self.reading:
            # The common case, kept short: this runs once per read (and so
            # has deliver() inlined).
            driver = self.driver
            data = driver.buffers.take(flags >> BUFFER_SHIFT, res)  # type: ignore[union-attr]
            logContexts = driver.logContexts
            stack = logContexts.stack
            if stack is None:
                self.deliver(data)
            else:
                transport = self.transport
                stack.append(ContextEntry(transport, logContexts.base))
                try:
                    try:
                        why = transport._dataReceived(data)
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        driver.lose(transport, why, True)
                finally:
                    stack.pop()
            if not flags & F_MORE:
                self.finished()
                self.rearm()
            return
        buffers: Any = self.driver.buffers
        if not flags & F_MORE:
            self.finished()
        if res > 0:
            self.hold(buffers.take(flags >> BUFFER_SHIFT, res))
            if self.state == ARMED and not self.reading:
                self._pausedData()
                return
        elif flags & F_BUFFER:
            buffers.recycle(flags >> BUFFER_SHIFT)
        elif res == _ENOBUFS:
            buffers.shortage()
        if res <= 0:
            why = receiveEnd(res)
            if why is not None:
                # End of file or an error: the multishot receive has ended.
                self.ended(why)
                return
        # The kernel ended the multishot receive (no buffer was free, or it
        # chose to): arm it again.  Data already delivered came from
        # completions that preceded this one, so nothing reorders.
        self.rearm()

    def _cancelWhileStopped(self) -> None:
        # The multishot receive drains as when data arrives while paused.
        self._pausedData()

    def _pausedData(self) -> None:
        """
        Data arrived while reading is paused: stop the multishot receive,
        keeping whatever it still delivers for when reading resumes.
        """
        self.state = DRAINING
        self.driver.ring.cancel(self, late=self._lateWhilePaused)

    def _lateWhilePaused(self, res: int, flags: int) -> None:
        """
        A completion of the receive cancelled by L{_pausedData}.
        """
        buffers: Any = self.driver.buffers
        if self.state == CLOSED:
            self.driver.recycleLate(res, flags)
            return
        if res > 0:
            self.hold(buffers.take(flags >> BUFFER_SHIFT, res))
        elif flags & F_BUFFER:
            buffers.recycle(flags >> BUFFER_SHIFT)
        elif res == _ENOBUFS:
            buffers.shortage()
        if flags & F_MORE:
            return
        if res <= 0 and res != _ECANCELED:
            why = receiveEnd(res)
            if why is not None and self.heldEnd is None:
                self.heldEnd = why
        self.state = IDLE
        if self.reading and not self.transport.disconnected:
            self._deliverLater()


class CopyingBufferReceiver(BufferReceiver):
    """
    A L{BufferReceiver} for where every read is copied out of its provided
    buffer (PyPy: see L{uringreactor.cffibuffers}), which reads bulk
    transfers the way epoll's reactor does.

    A read that fills a whole provided buffer is taken for the sign of a
    bulk transfer: the multishot receive is then cancelled (its last
    completions held and delivered first, as when data arrives while
    paused) and, while reads stay large, each read is a C{recv()} made when
    a one-shot poll reports the socket readable.  There PyPy's C{recv()}
    fills the string the protocol gets in place, where a provided buffer
    costs a copy out of it (3 us for 64 KiB under PyPy 7.3) and, the copy
    being a movable object, more to send it on (2 us): a 64 KiB echo spent
    6.6 us more per message in user space than on epoll.  A read of less
    than a quarter of a buffer goes back to the multishot receive.

    @ivar bulk: whether reads are C{recv()} calls on readiness.
    """

    __slots__ = ("bulk",)

    def __init__(self, transport: Any, driver: Driver) -> None:
        super().__init__(transport, driver)
        self.bulk = False

    def prepare(self, fd: int) -> None:
        if self.bulk:
            self.driver.ring.pollWith(fd, _POLLIN, self)
        else:
            super().prepare(fd)

    def completed(self, res: int, flags: int) -> None:
        """
        A completion of the multishot receive, or of the poll in bulk
        mode.
        """
        if self.bulk:
            self._readable(res)
            return
        super().completed(res, flags)
        buffers: Any = self.driver.buffers
        if (
            res == buffers.bufferSize
            and flags & F_MORE
            and self.state == ARMED
            and self.reading
            and not self.transport.disconnected
        ):
            # A whole buffer: bulk data.  Its multishot receive drains (what
            # it still brings is held and delivered first), then polls arm.
            self.bulk = True
            self._pausedData()

    def _cancelWhileStopped(self) -> None:
        if self.bulk:
            # A poll: cancelled as a single receive is.
            Receiver._cancelWhileStopped(self)
        else:
            super()._cancelWhileStopped()

    def _readable(self, res: int) -> None:
        """
        The poll armed in bulk mode completed: read what waits, as epoll's
        C{doRead} does, then poll (or receive) again.
        """
        self.finished()
        if res < 0:
            why = receiveEnd(res)
            if why is not None:
                self.ended(why)
            else:
                self.rearm()
            return
        if not self.reading:
            # Paused meanwhile: the data stays in the socket (flow control
            # pushes back on the peer) until reading resumes.
            return
        transport = self.transport
        skt = transport.socket
        size = self.driver.buffers.bufferSize  # type: ignore[union-attr]
        # A read of at most a buffer: PyPy's recv() fills a string of the
        # size asked for and shrinks it by copying when less came.
        try:
            data = skt.recv(size)
        except BlockingIOError:
            self.rearm()
            return
        except OSError as e:
            self._recvFailed(e)
            return
        if not data:
            self.ended(receiveEnd(0))  # type: ignore[arg-type]
            return
        if len(data) < size // 4:
            self.bulk = False
        self.deliver(data)
        if len(data) == size:
            # A full buffer: what came with it is read now, in this
            # iteration, as the multishot receive would have brought it (a
            # message a little longer than a buffer, 64 KiB of TLS records
            # say, then comes whole, where a tail read one iteration later
            # would have its response held back by Nagle's algorithm until
            # the peer's delayed acknowledgement).  Asked first how much
            # waits, so that no read fails for want of data.
            self._readPending(skt)
        self.rearm()

    def _readPending(self, skt: Any) -> None:
        """
        Read and deliver what the socket holds now, at most a buffer's
        worth, while the protocol still reads.
        """
        if not self.reading or self.transport.disconnected or self.state != IDLE:
            return
        pending = bytesWaiting(skt.fileno())
        if pending <= 0:
            return
        try:
            data = skt.recv(min(pending, self.driver.buffers.bufferSize))  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as e:
            self._recvFailed(e)
            return
        if data:
            self.deliver(data)

    def _recvFailed(self, e: OSError) -> None:
        why = receiveEnd(-(e.errno or errno.EIO))
        if why is not None:
            self.ended(why)
        else:
            self.rearm()


def bytesWaiting(fd: int) -> int:
    """
    How many bytes the socket C{fd} holds unread (C{FIONREAD}), or -1.
    """
    try:
        fcntl.ioctl(fd, termios.FIONREAD, _PENDING, True)
    except OSError:
        return -1
    return _PENDING[0]


class OwnBufferReceiver(Receiver):
    """
    Single receives into a buffer of the receiver's own (its memory), one
    at a time, re-armed after each completion: where the kernel has no
    provided buffers.
    """

    __slots__ = ()

    def prepare(self, fd: int) -> None:
        buf = self.memory
        if buf is None:
            buf = ffi.new("char[]", RECV_BUFFER_SIZE)
        self.driver.ring.receive(fd, buf, RECV_BUFFER_SIZE, self)

    def completed(self, res: int, flags: int) -> None:
        """
        A receive completed.
        """
        buf = self.memory
        self.finished()
        if res > 0:
            self.received(_unpack(buf, res))
            return
        why = receiveEnd(res)
        if why is not None:
            self.ended(why)
        else:
            self.rearm()


def receiverFor(transport: Any, driver: Driver) -> Receiver:
    """
    The receiver for a stream transport: into provided buffers where the
    reactor has them.
    """
    if driver.buffers is not None:
        if HANDS_OVER:
            return BufferReceiver(transport, driver)
        return CopyingBufferReceiver(transport, driver)
    return OwnBufferReceiver(transport, driver)
