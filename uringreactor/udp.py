"""
UDP over io_uring: datagrams received by a multishot recvmsg into the
reactor's provided buffers, sent by sendmsg operations.

The classes extend Twisted's L{twisted.internet.udp} ports, so binding,
C{connect}, addresses, broadcast and the multicast options (join, leave,
TTL, loopback, interface) are Twisted's.  What changes:

  - Receiving: one multishot recvmsg stays armed while the port reads; each
    datagram completes with its source address and payload in one provided
    buffer, and a burst of datagrams costs no system call beyond the loop's
    one C{io_uring_enter}.  Without multishot receives (kernels before 6.0,
    C{URINGREACTOR_DISABLE}, or a C{maxPacketSize} larger than a provided
    buffer) a one-shot poll waits for the socket to be readable and
    Twisted's own C{doRead} then reads every datagram waiting, as on epoll:
    a single receive re-armed after each datagram would read one per loop
    iteration, and a port that fell behind a burst would let its socket
    buffer overflow.  As on epoll, a datagram longer than C{maxPacketSize}
    is truncated to it, and a refusal reported by the kernel on a connected
    port calls C{connectionRefused}.

  - Sending: C{write} checks its arguments at once and raises what the
    epoll reactor raises for them (L{error.InvalidAddressError},
    L{error.MessageLengthError}, C{TypeError}); the datagram is then queued,
    and at the end of the iteration every datagram the port queued goes out
    with one C{sendmmsg} (c/datagrams.c), in the order written.  These
    sends are not io_uring operations: a UDP send completes or fails when it
    is made, so an operation would only add a completion per datagram, and
    datagrams that must stay in order would have to be linked, which
    DEFER_TASKRUN advances one link per C{io_uring_enter}.  Nothing the
    kernel reads outlives the call.  A full socket buffer delays the rest
    of the queue, until a poll reports the socket writable, instead of
    dropping it.  A datagram the kernel refuses is dropped as on epoll: an
    ICMP refusal on a connected port calls C{connectionRefused}; any other
    error (an unreachable network, a broadcast without C{SO_BROADCAST}) is
    logged, since C{write} has already returned.

  - Stopping: datagrams already written are still sent (if the socket's
    buffer is full, once it has room; the port closes, and
    C{stopListening}'s Deferred fires, then); receives are cancelled and
    their late completions absorbed by the ring.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
from typing import Any

from twisted.internet import abstract, base, error, interfaces, udp
from twisted.python import failure, log
from zope.interface import implementer

from uringreactor._liburing import ffi, lib
from uringreactor.messages import (
    RECVMSG_OUT,
    decodeAddress,
    encodeAddress,
    newMessage,
)
from uringreactor.operations import BUFFER_SHIFT, F_BUFFER, F_MORE, Operation
from uringreactor.outcomes import DATAGRAM_RECEIVE_AGAIN

# Largest UDP payloads: 65535 less the IPv4 and UDP headers, and less the
# UDP header alone for IPv6 (without jumbograms).
_MAX_DATAGRAM = {socket.AF_INET: 65507, socket.AF_INET6: 65527}

# Room reserved for the source address at the start of each provided buffer
# (a struct sockaddr_in6, 28 bytes, rounded up).
_NAME_ROOM = 32

_PAYLOAD_OFFSET = RECVMSG_OUT.size + _NAME_ROOM

# Most datagrams one sendmmsg takes.
_BATCH = lib.UR_DATAGRAM_BATCH

# connectionLost's reason while a port waits to close, when it had none.
_NO_REASON = object()

_ECANCELED = -errno.ECANCELED
_ENOBUFS = -errno.ENOBUFS
_ECONNREFUSED = -errno.ECONNREFUSED

# What stops a batch of sends without dropping a datagram: a full socket
# buffer waits for room; a full device queue (ENOBUFS) is tried again in
# the next iteration.
_WAIT_FOR_ROOM = frozenset({errno.EAGAIN})
_TRY_AGAIN = frozenset({errno.ENOBUFS})

_NULL = ffi.NULL

# Sends a batch: replaced by tests that play a full socket buffer.
sendDatagrams = lib.ur_send_datagrams


class Port(udp.Port):
    """
    A UDP port whose datagrams are received and sent by io_uring.
    """

    _uringHandle = True
    # For the reactor's getReaders()/getWriters(): a port never waits to
    # write.
    _reading = False
    _writing = False
    _registered = False
    _flushQueued = False
    # The receive (or poll) in flight, and the message header of the last
    # receive to complete, for the next (a cancelled one keeps its own).
    _recvOp: Operation | None = None
    _recvSpare: Any = None
    _multishot = False
    # The poll for room in the socket's buffer, while datagrams wait for it.
    _roomOp: Operation | None = None
    # Set (to the reason) when the port is to close once its queue is sent.
    _closeWhenSent: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The datagrams written and not yet sent, and the address each goes
        # to (a struct sockaddr, or b"" for the connected address).
        self._queue: list[bytes] = []
        self._names: list[bytes] = []
        self._sendError = ffi.new("int *")
        self._addressCache: dict[Any, bytes] = {}
        self._nameCache: dict[bytes, tuple[str, int]] = {}
        # Datagrams received in this iteration, to deliver together.
        self._arrived: list[tuple[bytes, Any]] = []

    # -- reading --------------------------------------------------------

    def startReading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._register()
        if self._arrived:
            self.reactor._driver.deliverAfterDispatch(self)
        if self._recvOp is None:
            self._armRecv()

    def _removedAsReader(self) -> None:
        # reactor.removeReader(port): stopReading already cancels the
        # receive in flight, leaving the socket alone.
        self.stopReading()

    def stopReading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        self._cancelRecv()

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            self.reactor._driver.register(self)

    def _cancelRecv(self) -> None:
        op = self._recvOp
        if op is not None:
            self._recvOp = None
            driver = self.reactor._driver
            driver.ring.cancel(op, late=driver.recycleLate)

    def _armRecv(self) -> None:
        driver = self.reactor._driver
        ring = driver.ring
        buffers = driver.buffers
        fd = self.socket.fileno()
        self._multishot = (
            buffers is not None
            and "multishot_recv" in ring.features
            and self.maxPacketSize <= buffers.bufferSize - _PAYLOAD_OFFSET
        )
        if not self._multishot:
            self._recvOp = ring.poll(fd, select.POLLIN, self._readable)
            return
        assert buffers is not None
        msg, self._recvSpare = self._recvSpare, None
        if msg is None:
            msg = newMessage()
        self._recvOp = ring.receiveMessages(
            fd, msg, _NAME_ROOM, buffers.groupId, Operation(self._received, None)
        )

    def _received(self, res: int, flags: int) -> None:
        """
        A completion of the multishot recvmsg.
        """
        op = self._recvOp
        assert op is not None
        driver = self.reactor._driver
        if not flags & F_MORE:
            self._recvOp = None
            # The header the kernel read is free again for the next receive.
            self._recvSpare = op.memory
        if res >= 0:
            # Header, address and payload copied straight out of the
            # provided buffer (out of a copy of it under PyPy: see
            # cffibuffers), each once; then the buffer goes back, the view
            # of it dropped first.
            buffers: Any = driver.buffers
            bufferId = flags >> BUFFER_SHIFT
            raw = buffers.view(bufferId, res)
            namelen, _, payloadlen, _ = RECVMSG_OUT.unpack_from(raw)
            name = bytes(raw[RECVMSG_OUT.size : RECVMSG_OUT.size + namelen])
            size = min(payloadlen, self.maxPacketSize)
            data = bytes(raw[_PAYLOAD_OFFSET : _PAYLOAD_OFFSET + size])
            del raw
            buffers.recycle(bufferId)
            addr = self._nameCache.get(name)
            if addr is None:
                addr = self._decodeName(name)
            arrived = self._arrived
            if not arrived:
                driver.deliverAfterDispatch(self)
            arrived.append((data, addr))
        else:
            if flags & F_BUFFER:
                driver.recycleLate(res, flags)
            elif res == _ENOBUFS:
                driver.buffers.shortage()  # type: ignore[union-attr]
            if res == _ECONNREFUSED:
                if self._connectedAddr:
                    driver.call(self, self.protocol.connectionRefused)
            elif -res not in DATAGRAM_RECEIVE_AGAIN:
                self._logError(res, "Could not receive datagram")
        if self._recvOp is None and self._reading and self.connected:
            self._armRecv()

    def _readable(self, res: int, flags: int) -> None:
        """
        The poll armed without multishot receives completed: read what
        waits, then poll again.
        """
        self._recvOp = None
        if res >= 0:
            self.reactor._driver.call(self, self._readWaiting)
        elif -res not in DATAGRAM_RECEIVE_AGAIN:
            self._logError(res, "Could not poll a datagram socket")
        if self._recvOp is None and self._reading and self.connected:
            self._armRecv()

    def _readWaiting(self) -> None:
        # As the epoll reactor's _doReadOrWrite runs doRead: what it raises
        # or returns disconnects the port.
        try:
            why = self.doRead()
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        if why:
            self.reactor._driver.lose(self, why, True)

    def _decodeName(self, name: bytes) -> Any:
        addr: Any = decodeAddress(name) if name else None
        cache = self._nameCache
        if len(cache) >= 1024:
            cache.clear()
        cache[name] = addr
        return addr

    def _deliverArrivals(self) -> None:
        """
        Deliver the datagrams this iteration's completions brought, in the
        order they arrived, in one log context; those that arrive while
        the port does not read wait until it reads again, and a port that
        closed meanwhile drops them.
        """
        if not self._reading or not self.connected:
            return
        arrived, self._arrived = self._arrived, []
        self.reactor._driver.call(self, self._deliverAll, arrived)

    def _deliverAll(self, arrived: list[tuple[bytes, Any]]) -> None:
        received = self.protocol.datagramReceived
        for data, addr in arrived:
            try:
                received(data, addr)
            except BaseException:
                log.err()

    # -- writing --------------------------------------------------------

    def startWriting(self) -> None:
        # Datagrams are sent by _flush, never on writability.
        pass

    def stopWriting(self) -> None:
        pass

    def write(  # type: ignore[override]
        self, datagram: bytes, addr: Any = None
    ) -> None:
        """
        Queue a datagram to C{addr} (or to the connected address), checked
        as the epoll reactor checks it; it is sent at the end of this
        iteration.
        """
        if self._connectedAddr:
            assert addr in (None, self._connectedAddr)
            name = b""
        else:
            assert addr is not None
            cached = self._addressCache.get(addr)
            name = cached if cached is not None else self._encode(addr)
        if type(datagram) is not bytes:
            # As sendto: any bytes-like object, copied now.
            datagram = bytes(memoryview(datagram))
        if len(datagram) > _MAX_DATAGRAM[self.addressFamily]:
            raise error.MessageLengthError("message too long")
        self._queue.append(datagram)
        self._names.append(name)
        if not self._flushQueued:
            self.reactor._driver.queueFlush(self)
            self._register()

    def _encode(self, addr: Any) -> bytes:
        host = addr[0]
        if (
            not abstract.isIPAddress(host)
            and not abstract.isIPv6Address(host)
            and host != "<broadcast>"
        ):
            raise error.InvalidAddressError(
                host, "write() only accepts IP addresses, not hostnames"
            )
        if (
            abstract.isIPAddress(host) or host == "<broadcast>"
        ) and self.addressFamily == socket.AF_INET6:
            raise error.InvalidAddressError(
                host, "IPv6 port write() called with IPv4 or broadcast address"
            )
        if abstract.isIPv6Address(host) and self.addressFamily == socket.AF_INET:
            raise error.InvalidAddressError(
                host, "IPv4 port write() called with IPv6 address"
            )
        name = encodeAddress(self.addressFamily, addr)
        cache = self._addressCache
        if len(cache) >= 1024:
            cache.clear()
        try:
            cache[addr] = name
        except TypeError:
            # An unhashable address (a list): fine, just not cached.
            pass
        return name

    def _flush(self) -> bool:
        """
        Called by the reactor at the end of an iteration: send the queued
        datagrams.
        """
        self._flushQueued = False
        if self._queue and self._roomOp is None and hasattr(self, "socket"):
            self._sendQueued()
            self._closeIfSent()
        return False

    def _sendQueued(self) -> None:
        """
        Send the queue, a batch per C{sendmmsg}, until it is empty or the
        socket's buffer is full.
        """
        queue = self._queue
        names = self._names
        fd = self.socket.fileno()
        error = self._sendError
        while queue:
            if len(queue) > _BATCH:
                batch, batchNames = queue[:_BATCH], names[:_BATCH]
            else:
                batch, batchNames = queue, names
            count = len(batch)
            joinedNames = b"".join(batchNames)
            sent = sendDatagrams(
                fd,
                b"".join(batch),
                [len(d) for d in batch],
                joinedNames or _NULL,
                [len(n) for n in batchNames] if joinedNames else _NULL,
                count,
                error,
            )
            del queue[:sent]
            del names[:sent]
            if sent == count:
                continue
            failed = error[0]
            if failed in _WAIT_FOR_ROOM:
                self._roomOp = self.reactor._driver.ring.poll(
                    fd, select.POLLOUT, self._room
                )
                return
            if failed in _TRY_AGAIN:
                self.reactor._driver.queueFlush(self)
                return
            # The kernel refused this datagram: it is dropped, as on epoll.
            del queue[0]
            del names[0]
            if failed == errno.ECONNREFUSED:
                if self._connectedAddr:
                    self.reactor._driver.call(self, self.protocol.connectionRefused)
            else:
                self._logError(-failed, "Could not send datagram")

    def _room(self, res: int, flags: int) -> None:
        """
        The poll for room in the socket's buffer completed: send what
        waited, and finish closing if the port is closing.
        """
        self._roomOp = None
        if res < 0 and res != _ECANCELED:
            self._logError(res, "Could not poll a datagram socket")
        if res < 0 and res != _ECANCELED and self._closeWhenSent is not None:
            # The port is closing and cannot wait for room: what is left
            # cannot be sent.
            self._queue = []
            self._names = []
        if self._queue and hasattr(self, "socket"):
            self._sendQueued()
        self._closeIfSent()

    def _closeIfSent(self) -> None:
        """
        Finish closing a port that waited for its queue to be sent.
        """
        if self._closeWhenSent is not None and not self._queue:
            reason, self._closeWhenSent = self._closeWhenSent, None
            self.connectionLost(reason)

    def _logError(self, res: int, why: str) -> None:
        """
        Log the error of a failed operation, in this port's log context.
        """
        self.reactor._driver.call(
            self, log.err, failure.Failure(OSError(-res, os.strerror(-res))), why
        )

    # -- stopping -------------------------------------------------------

    def connectionLost(self, reason: Any = None) -> None:
        """
        Stop receiving, send what was written, close the socket once the
        kernel has every operation that names it.
        """
        self.stopReading()
        self._flush()
        if self._queue:
            # Datagrams written before the port stopped are still to go,
            # once the socket's buffer has room: close once they have.
            self._closeWhenSent = reason if reason is not None else _NO_REASON
            return
        if reason is _NO_REASON:
            reason = None
        log.msg(f"(UDP Port {self._realPortNumber} Closed)")
        self._realPortNumber = None
        self.maxThroughput = -1
        self._queue = []
        self._names = []
        self._arrived = []
        if self._registered:
            self._registered = False
            self.reactor._driver.unregister(self)
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.reactor._driver.ring.closeAfterSubmit(self.socket, immediately=True)
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


@implementer(interfaces.IMulticastTransport)
class MulticastPort(udp.MulticastMixin, Port):
    """
    A UDP port that supports multicast, receiving and sending through
    io_uring.
    """

    def __init__(
        self,
        port: int,
        proto: Any,
        interface: str = "",
        maxPacketSize: int = 8192,
        reactor: Any = None,
        listenMultiple: bool = False,
    ) -> None:
        Port.__init__(self, port, proto, interface, maxPacketSize, reactor)
        self.listenMultiple = listenMultiple

    createInternetSocket = udp.MulticastPort.createInternetSocket
