"""
Operations: what the kernel owns, and how the ring prepares it.

Every operation submitted to the kernel is an L{Operation}: its slot in
the ring's table (allocated by the C call that prepares it, which tags the
SQE with it; the C side keeps the tags in flight, so that a ring released
without its loop can cancel each of them), the handler its completions go
to, a callable C{handler(res, flags)}, and everything the kernel may read
or write for it (Python buffers, cffi memory).  The ring's table
(C{Ring.ops}, a list indexed by slot) holds each operation for exactly as
long as the kernel owns it: until its last completion arrives (for
multishot operations, the first completion without C{IORING_CQE_F_MORE}).
A slot, a small number, costs the table one list entry; the 64-bit tags
the kernel sees would cost a dictionary entry and an integer object each,
for every idle connection's armed receive.  So whatever the kernel touches
is alive while it may touch it, whoever else lets go of it.

Only L{Preparing}, which the ring is, prepares operations: the transports
ask the ring for a receive, a send, an accept, a poll or a message
operation (C{ring.receive}, C{ring.send}, ...), give it the handler and the
memory, and get the L{Operation} back, to cancel it if need be.

Cancellation is asynchronous.  L{Preparing.cancel} swaps the operation's
handler for a L{_Cancelled} record, which knows how to clean up after a
late completion (a socket accepted after all, a provided buffer to give
back), and queues an C{ASYNC_CANCEL}.  The operation keeps its memory until
its final completion; its former owner never hears of it again: no
completion reaches a closed transport.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
from collections.abc import Callable
from typing import Any

from uringreactor._liburing import ffi, lib

Handler = Callable[[int, int], object]

KIND_POLL = lib.UR_KIND_POLL
KIND_ACCEPT = lib.UR_KIND_ACCEPT
KIND_RECV = lib.UR_KIND_RECV
KIND_SEND = lib.UR_KIND_SEND

F_MORE = lib.IORING_CQE_F_MORE
F_BUFFER = lib.IORING_CQE_F_BUFFER
BUFFER_SHIFT = lib.IORING_CQE_BUFFER_SHIFT

_prepPoll = lib.ur_prep_poll
_prepAccept = lib.ur_prep_accept
_prepRecv = lib.ur_prep_recv
_prepRead = lib.ur_prep_read
_prepRecvMultishot = lib.ur_prep_recv_multishot
_prepSend = lib.ur_prep_send
_prepSendv = lib.ur_prep_sendv
_fromBuffer = ffi.from_buffer

# Memory the kernel reads after the call that prepared the operation has
# returned.  CPython hands a C{char *} parameter a bytes object's own
# storage, which stays put while the object lives (the operation holds
# it).  PyPy may hand it a copy that lives only for the call; there the
# operation holds memory of its own (see _keepable).
_BYTES_STAY_PUT = platform.python_implementation() == "CPython"
_newArray = ffi.new


def _keepable(piece: Any) -> Any:
    """
    Memory with C{piece}'s contents that stays put for as long as the
    returned cdata lives.  C{ffi.from_buffer} pins the object itself; under
    PyPy, which must then move a young object out of its nursery, a copy of
    a bytes object is cheaper (measured: 65 against 285 ns for 64 bytes, 1
    against 2 us for 4 KiB) and is what is made.
    """
    if not _BYTES_STAY_PUT and type(piece) is bytes:
        return _newArray("char[]", piece)
    return _fromBuffer(piece)


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def _pinned(piece: Any) -> tuple[Any, Any]:
    """
    What keeps C{piece}'s contents in place for the kernel while it lives,
    and the address of its first byte.

    A memoryview (the rest of a partly sent piece) is pinned through the
    object it views, not through the view itself: a pinned view has an
    export, and CPython's garbage collector, clearing a reference cycle that
    holds both the view and what pins it (a closed connection whose send was
    cancelled, kept by its protocol), can clear the view first and crash when
    the export is then released.
    """
    if _BYTES_STAY_PUT and type(piece) is memoryview:
        whole = _fromBuffer(piece.obj)
        # The view's own export lasts only for this call.
        start = _address(_fromBuffer(piece)) - _address(whole)
        return whole, whole + start
    keep = _keepable(piece)
    return keep, keep


# From the C headers: PyPy's socket module lacks it.
MSG_NOSIGNAL: int = lib.MSG_NOSIGNAL
_MSGHDR_SIZE = lib.ur_msghdr_size()
_ACCEPT_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class Operation:
    """
    One operation the kernel owns, from its preparation to its last
    completion.

    @ivar tag: its slot in the ring's table (the C side keeps the
        C{user_data} tag the kernel knows it by).
    @ivar handler: called as C{handler(res, flags)} for each completion; or
        L{None}, for operation objects that handle their completions
        themselves, in a method C{completed(res, flags)}.  (Receivers and
        senders do: an operation then costs no bound-method object, which
        every armed receive would keep for as long as its connection idles.)
    @ivar memory: everything the kernel may read or write for it, kept
        alive by this object, which the ring's table keeps alive until the
        last completion.
    """

    __slots__ = ("tag", "handler", "memory")

    def __init__(self, handler: Handler | None, memory: Any) -> None:
        self.tag = 0
        self.handler = handler
        self.memory = memory

    def completed(self, res: int, flags: int) -> object:
        """
        A completion of an operation without a handler: what subclasses
        that handle their own completions implement.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        handler = self.handler
        what = type(self).__name__ if handler is None else repr(handler)
        return f"<Operation {self.tag:#x} {what}>"


class _Cancelled:
    """
    Stands in for the handler of a cancelled operation until its final
    completion.

    @ivar late: called as C{late(res, flags)} for each completion that still
        arrives, to release what it carries; or L{None}.
    """

    __slots__ = ("late", "ring")

    def __init__(self, ring: Preparing, late: Handler | None) -> None:
        self.ring = ring
        self.late = late

    def __call__(self, res: int, flags: int) -> None:
        late = self.late
        if not flags & F_MORE:
            self.ring._cancelling -= 1
            # The last completion: let go of the late handler, which often
            # refers back to the operation (a receiver's own method), so
            # that the two do not wait for the garbage collector.
            self.late = None
        if late is not None:
            late(res, flags)


def submissionError(rc: int) -> OSError:
    """
    The error for a preparation that failed with C{rc} (a negative errno):
    no free SQE after a submission (C{EBUSY}), no memory for the table of
    operations (C{ENOMEM}), an argument the C side refused (C{EINVAL}).
    """
    return OSError(-rc, "io_uring submission: " + os.strerror(-rc))


class Preparing:
    """
    The operations a ring prepares (mixed into L{uringreactor.ring.Ring}).

    @ivar ops: the table of the operations the kernel owns, indexed by
        slot (L{None} in free slots).
    """

    _ptr: Any
    ops: list[Operation | None]
    # Completions reaped while settling, for their owners' next dispatch.
    _deferred: list[tuple[Operation, int, int]]
    # Cancelled operations whose final completion has not arrived yet.
    _cancelling: int

    def _own(self, ud: int, handler: Handler, memory: Any) -> Operation:
        """
        Record the operation just prepared in a new L{Operation}: C{ud} is
        what the C{lib.ur_prep_*} call returned, its tag or a negative errno
        (which raises, and then the kernel never saw the memory).
        """
        return self._carry(ud, Operation(handler, memory), memory)

    def _carry(self, ud: int, op: Operation, memory: Any) -> Operation:
        """
        Record the operation just prepared in C{op}, an operation object
        not in flight.  Receivers and senders, which have one operation in
        flight at a time, are their own carriers or keep one: an operation
        then costs no allocation.
        """
        if ud < 0:
            raise submissionError(ud)
        op.memory = memory
        op.tag = ud
        try:
            self.ops[ud] = op
        except IndexError:
            self._grow(ud)
            self.ops[ud] = op
        return op

    def _grow(self, slot: int) -> None:
        """
        Make the table long enough for C{slot} (the C side's table doubles
        the same way).
        """
        ops = self.ops
        while len(ops) <= slot:
            ops.extend([None] * max(len(ops), 1024))

    def poll(self, fd: int, mask: int, handler: Handler) -> Operation:
        """
        A one-shot poll of C{fd} for the events in C{mask}.
        """
        return self._own(_prepPoll(self._ptr, fd, mask, 0, KIND_POLL), handler, None)

    def pollWith(self, fd: int, mask: int, op: Operation) -> Operation:
        """
        A one-shot poll of C{fd} for the events in C{mask}, carried by
        C{op} (an operation object not in flight, such as a receiver).
        """
        return self._carry(_prepPoll(self._ptr, fd, mask, 0, KIND_POLL), op, None)

    def accept(self, fd: int, multishot: bool, handler: Handler) -> Operation:
        """
        Accept connections on the listening socket C{fd}: one, or (multishot)
        each as it comes; the accepted sockets are non-blocking and
        close-on-exec.
        """
        return self._own(
            _prepAccept(
                self._ptr, fd, ffi.NULL, ffi.NULL, _ACCEPT_FLAGS, multishot, KIND_ACCEPT
            ),
            handler,
            None,
        )

    def receive(self, fd: int, buffer: Any, size: int, op: Operation) -> Operation:
        """
        One receive from C{fd} into C{buffer} (cffi memory of C{size}
        bytes), carried by C{op}, which owns the buffer until it completes.
        """
        return self._carry(
            _prepRecv(self._ptr, fd, buffer, size, 0, KIND_RECV), op, buffer
        )

    def read(self, fd: int, buffer: Any, size: int, op: Operation) -> Operation:
        """
        One read from the descriptor C{fd} (a pipe) into C{buffer} (cffi
        memory of C{size} bytes), carried by C{op}, which owns the buffer
        until it completes.
        """
        return self._carry(
            _prepRead(self._ptr, fd, buffer, size, -1, KIND_RECV), op, buffer
        )

    def readSelect(self, fd: int, groupId: int, size: int, op: Operation) -> Operation:
        """
        One read of up to C{size} bytes from the descriptor C{fd} (a pipe)
        into a buffer of the provided group C{groupId}, which the kernel
        takes only when data arrives (so a read waiting on a quiet pipe
        holds no memory); carried by C{op}.
        """
        return self._carry(
            _prepRead(self._ptr, fd, ffi.NULL, size, groupId, KIND_RECV), op, None
        )

    def receiveMultishot(self, fd: int, groupId: int, op: Operation) -> Operation:
        """
        Receives from C{fd}, each into a buffer of the provided group
        C{groupId} (which outlives every operation: the ring frees it only
        after the kernel has let go), until an error or end of file ends it.
        """
        return self._carry(
            _prepRecvMultishot(self._ptr, fd, groupId, 0, KIND_RECV), op, None
        )

    def send(self, fd: int, pieces: list[Any], length: int, op: Operation) -> None:
        """
        Send C{pieces} (bytes-like objects, C{length} bytes in all) on the
        stream socket C{fd} as one operation, vectored if there are several,
        carried by C{op}: an operation object not in flight (a sender, which
        has one send in flight at a time, reuses one for all of them and so
        allocates nothing per send), whose handler gets the completion.  The
        operation's memory starts with C{pieces}.
        """
        ptr = self._ptr
        if len(pieces) == 1:
            piece = pieces[0]
            if _BYTES_STAY_PUT and type(piece) is bytes:
                # Passed as it is: the kernel reads the object's own storage,
                # which stays put while the operation holds the object.
                memory: Any = (pieces,)
                ud = _prepSend(ptr, fd, piece, length, MSG_NOSIGNAL, KIND_SEND)
            else:
                keep, buf = _pinned(piece)
                memory = (pieces, keep)
                ud = _prepSend(ptr, fd, buf, length, MSG_NOSIGNAL, KIND_SEND)
        else:
            count = len(pieces)
            iov = ffi.new("struct iovec[]", count)
            buffers = []
            for i, piece in enumerate(pieces):
                keep, buf = _pinned(piece)
                buffers.append(keep)
                entry = iov[i]
                entry.iov_base = buf
                entry.iov_len = len(piece)
            msg = ffi.new("char[]", _MSGHDR_SIZE)
            memory = (pieces, buffers, iov, msg)
            ud = _prepSendv(ptr, fd, iov, count, msg, MSG_NOSIGNAL, KIND_SEND)
        # _carry, inlined: this runs once per send.
        if ud < 0:
            raise submissionError(ud)
        op.memory = memory
        op.tag = ud
        try:
            self.ops[ud] = op
        except IndexError:
            self._grow(ud)
            self.ops[ud] = op

    def receiveMessage(
        self,
        fd: int,
        msg: Any,
        buffer: Any,
        size: int,
        nameSize: int,
        controlSize: int,
        groupId: int,
        op: Operation,
    ) -> Operation:
        """
        One recvmsg from C{fd} with the header C{msg} (a C{struct ur_msg},
        L{uringreactor.messages.newMessage}): the data into C{buffer}
        (C{size} bytes) or, for C{buffer} L{None}, into a buffer of the
        provided group C{groupId} (at most C{size} bytes); room for a source
        address of C{nameSize} bytes and control data of C{controlSize}
        bytes; carried by C{op}.  The operation's memory is C{(msg, buffer)}.
        """
        return self._carry(
            lib.ur_prep_recvmsg_into(
                self._ptr,
                fd,
                msg,
                buffer if buffer is not None else ffi.NULL,
                size,
                nameSize,
                controlSize,
                groupId,
                KIND_RECV,
            ),
            op,
            (msg, buffer),
        )

    def receiveMessages(
        self, fd: int, msg: Any, nameSize: int, groupId: int, op: Operation
    ) -> Operation:
        """
        Multishot recvmsg from the datagram socket C{fd} with the header
        C{msg}: each datagram lands in a buffer of the provided group
        C{groupId}, after the C{io_uring_recvmsg_out} header and C{nameSize}
        bytes for its source address; carried by C{op}.  The operation's memory is
        C{msg}.
        """
        return self._carry(
            lib.ur_prep_recvmsg_multishot(
                self._ptr, fd, msg, nameSize, 0, groupId, KIND_RECV
            ),
            op,
            msg,
        )

    def sendMessage(
        self,
        fd: int,
        data: bytes,
        name: bytes | None,
        passDescriptor: int,
        flags: int,
        linked: bool,
        handler: Handler,
    ) -> Operation:
        """
        One sendmsg of C{data} on C{fd}: to the address C{name} (a C{struct
        sockaddr}) unless L{None}, with the descriptor C{passDescriptor}
        (C{SCM_RIGHTS}) unless it is -1; C{linked} to the operation prepared
        next, which the kernel then starts only once this one has succeeded.
        """
        msg = ffi.new("struct ur_msg *")
        length = len(data)
        nameLength = len(name) if name is not None else 0
        if not _BYTES_STAY_PUT:
            data = _keepable(data)
            name = _keepable(name) if name is not None else None
        return self._own(
            lib.ur_prep_sendmsg_to(
                self._ptr,
                fd,
                msg,
                data,
                length,
                name if name is not None else ffi.NULL,
                nameLength,
                passDescriptor,
                flags,
                linked,
                KIND_SEND,
            ),
            handler,
            (msg, data, name),
        )

    def cancel(self, op: Operation, late: Handler | None = None) -> bool:
        """
        Cancel C{op}: its owner will not hear of it again; its memory stays
        alive until its final completion.

        @param late: called for completions that still arrive, to release
            what they carry (see L{_Cancelled}).
        @return: C{True} if the operation was still in flight.
        """
        if op.handler.__class__ is _Cancelled:
            return False
        ops = self.ops
        tag = op.tag
        # owns(op), inlined: a connection that closes with a receive armed
        # cancels it.
        if not (tag < len(ops) and ops[tag] is op):
            return self._cancelReaped(op, late)
        rc = lib.ur_prep_cancel(self._ptr, tag)
        if rc > 0:
            # Withdrawn from the SQ: the kernel never sees it (its SQE is
            # now a no-op), and nothing of it has happened.  This is its
            # final completion, here and now: an operation cancelled before
            # it was submitted, as the kernel would report one.
            ops[tag] = None
            if late is not None:
                late(-errno.ECANCELED, 0)
            return True
        op.handler = _Cancelled(self, late)
        self._cancelling += 1
        if rc < 0:
            raise submissionError(rc)
        return True

    def owns(self, op: Operation) -> bool:
        """
        Whether C{op} is in the table: the kernel has not finished it, or
        its last completion has not been reaped.
        """
        ops = self.ops
        tag = op.tag
        return tag < len(ops) and ops[tag] is op

    def _cancelReaped(self, op: Operation, late: Handler | None) -> bool:
        """
        Cancel C{op} whose last completion was reaped while the reactor was
        stopped and waits for the next dispatch (see C{Ring.settle}): its
        owner will not hear of those completions, C{late} takes them now.

        @return: C{True} if some were waiting.
        """
        waiting = [record for record in self._deferred if record[0] is op]
        if not waiting:
            return False
        self._deferred = [record for record in self._deferred if record[0] is not op]
        if late is not None:
            for _, res, flags in waiting:
                late(res, flags)
        return True
