"""
What completion-driven transports and ports use of their reactor.

A transport of this package (L{uringreactor.tcp}, L{uringreactor.unix},
L{uringreactor.udp}) does not poke at the reactor: it reaches everything
it needs through the reactor's L{Driver}, C{reactor._driver}:

  - C{ring}, the L{uringreactor.ring.Ring} that gives it operations;
  - C{buffers}, the provided receive buffers, or L{None} where the kernel
    has none;
  - the list of live handles (for C{getReaders}/C{getWriters}) and the
    queue of handles to flush before the next submission;
  - the log contexts its protocol's code runs in, and disconnecting, as
    Twisted's reactors do after a failed C{doRead}/C{doWrite}.

A handle is any object the driver lists: it has C{_reading} and
C{_writing} (what C{getReaders}/C{getWriters} report), C{_flushQueued},
C{_flush()} (send what was written, called once per iteration after
C{queueFlush}), C{startReading()} and C{stopReading()}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python import failure, log

from uringreactor.bufferring import BufferRing
from uringreactor.logcontext import LogContexts
from uringreactor.operations import BUFFER_SHIFT, F_BUFFER
from uringreactor.ring import Ring


class Driver:
    """
    The reactor's side of completion-driven I/O.

    @ivar ring: the L{Ring}.
    @ivar buffers: the L{BufferRing} of provided receive buffers, or L{None}.
    @ivar logContexts: the L{LogContexts} protocol code runs in.
    @ivar handles: the live handles.
    @ivar flushQueue: the handles to flush before the next submission.
    @ivar arrivals: the handles with input to deliver once the completions
        of this iteration are dispatched (see L{deliverArrivals}).
    @ivar idleSenders: senders no transport uses, for the next transport
        that writes (see L{uringreactor.sending.Sender.sent}).
    @ivar sendDirectly: true while the only handle with output in this
        iteration flushes: it may then send with C{send()} at once (see
        L{uringreactor.sending.Sender}).
    """

    def __init__(
        self,
        ring: Ring,
        buffers: BufferRing | None,
        disconnect: Callable[[Any, BaseException, bool], object],
        callLater: Callable[..., Any],
    ) -> None:
        self.ring = ring
        self.buffers = buffers
        self.logContexts = LogContexts()
        self.handles: set[Any] = set()
        self.flushQueue: list[Any] = []
        self.arrivals: list[Any] = []
        self.idleSenders: list[Any] = []
        self.sendDirectly = False
        self._disconnect = disconnect
        self.callLater = callLater

    def register(self, handle: Any) -> None:
        """
        List C{handle} as alive.
        """
        self.handles.add(handle)

    def unregister(self, handle: Any) -> None:
        """
        Stop listing C{handle}.
        """
        self.handles.discard(handle)

    def queueFlush(self, handle: Any) -> None:
        """
        Flush C{handle} before the next submission (once, however often
        this is called before then).
        """
        if not handle._flushQueued:
            handle._flushQueued = True
            self.flushQueue.append(handle)

    def deliverAfterDispatch(self, handle: Any) -> None:
        """
        Call C{handle._deliverArrivals()} once this iteration's completions
        are dispatched: a handle that gathers what a batch of completions
        brought (the datagrams of one port) delivers it together, in one
        log context, rather than one call per completion.
        """
        self.arrivals.append(handle)

    def deliverArrivals(self) -> None:
        """
        Deliver what the handles given to L{deliverAfterDispatch} gathered.
        """
        arrivals, self.arrivals = self.arrivals, []
        for handle in arrivals:
            handle._deliverArrivals()

    def call(self, obj: Any, func: Callable[..., Any], *args: Any) -> Any:
        """
        Call C{func(*args)} in C{obj}'s log context, logging what it raises
        (C{log.callWithLogger}).
        """
        return self.logContexts.call(obj, func, *args)

    def lose(self, handle: Any, why: BaseException, isRead: bool) -> None:
        """
        Disconnect C{handle} for C{why}, as the reactor does when a
        C{doRead} (C{isRead}) or C{doWrite} returns or raises it, in the
        handle's log context.
        """
        self.logContexts.call(handle, self._disconnect, handle, why, isRead)

    def recycleLate(self, res: int, flags: int) -> None:
        """
        A late completion of a cancelled receive: give back the provided
        buffer it carries.
        """
        if flags & F_BUFFER and self.buffers is not None:
            self.buffers.recycle(flags >> BUFFER_SHIFT)

    def flush(self) -> bool:
        """
        Flush every queued handle: their output goes to the kernel together,
        in the next C{io_uring_enter} (a lone one may send directly).

        @return: C{True} if application code ran (a flush with nothing left
            to send finished a C{loseConnection} or resumed a producer), or
            more handles were queued meanwhile.
        """
        queue = self.flushQueue
        self.flushQueue = []
        ranApplicationCode = False
        self.sendDirectly = len(queue) == 1
        for handle in queue:
            try:
                if handle._flush():
                    ranApplicationCode = True
            except BaseException:
                # That handle alone is lost, as epoll's doWrite failing
                # loses its own; the others still flush.
                ranApplicationCode = True
                self._flushFailed(handle, failure.Failure())
        self.sendDirectly = False
        return ranApplicationCode or bool(self.flushQueue)

    def _flushFailed(self, handle: Any, why: failure.Failure) -> None:
        """
        Flushing C{handle} raised C{why}: log it and disconnect C{handle},
        as C{_doReadOrWrite} does for a C{doWrite} that raises.
        """
        handle._flushQueued = False

        def lose() -> None:
            log.err(why, "Error flushing a transport's output")
            self._disconnect(handle, why.value or RuntimeError(), False)

        self.logContexts.call(handle, lose)
