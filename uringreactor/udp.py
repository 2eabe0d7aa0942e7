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
    L{error.MessageLengthError}, C{TypeError}); the datagram is then queued
    and goes out, with every other datagram queued in the same iteration, as
    a chain of linked sendmsg operations, so datagrams leave in the order
    they were written.  A port has one chain in flight at a time: two
    chains are not ordered with each other (with DEFER_TASKRUN the kernel
    advances a chain one link per io_uring_enter, and the chains of two
    iterations interleave), so what is written meanwhile waits for the
    chain to complete.  A full socket buffer delays a datagram instead of
    dropping it.  Errors only the kernel can report (an ICMP refusal,
    an unreachable network) are reported when the send completes: a refusal
    on a connected port calls C{connectionRefused}, as on epoll; any other
    error is logged.

  - Stopping: datagrams already written are still sent (those that must
    wait for a chain in flight are sent after it, and the port closes, and
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

# Most datagrams one port chains per loop iteration; the rest go in the
# next one.
_CHAIN_LIMIT = 128

# connectionLost's reason while a port waits to close, when it had none.
_NO_REASON = object()

_ECANCELED = -errno.ECANCELED
_ENOBUFS = -errno.ENOBUFS
_ECONNREFUSED = -errno.ECONNREFUSED


class _Outgoing:
    """
    One datagram to send, and the handler of its sendmsg operation (which
    owns what the kernel reads while it is in flight).
    """

    __slots__ = ("port", "data", "name")

    def __init__(self, port: Port, data: bytes, name: bytes | None) -> None:
        self.port = port
        self.data = data
        self.name = name

    def __call__(self, res: int, flags: int) -> None:
        self.port._sent(self, res)


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
    # Datagrams of a failed chain that were never tried, to send again.
    _retry: list[_Outgoing] | None = None
    # Operations of the chain in flight that have not completed.
    _sending = 0
    # Set (to the reason) when the port is to close once its chain is in.
    _closeWhenSent: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Outgoing] = []
        self._addressCache: dict[Any, bytes] = {}
        self._nameCache: dict[bytes, tuple[str, int]] = {}

    # -- reading --------------------------------------------------------

    def startReading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._register()
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
            # provided buffer, each once; then the buffer goes back.
            buffers: Any = driver.buffers
            bufferId = flags >> BUFFER_SHIFT
            raw = buffers.view(bufferId, res)
            namelen, _, payloadlen, _ = RECVMSG_OUT.unpack_from(raw)
            name = bytes(raw[RECVMSG_OUT.size : RECVMSG_OUT.size + namelen])
            size = min(payloadlen, self.maxPacketSize)
            data = bytes(raw[_PAYLOAD_OFFSET : _PAYLOAD_OFFSET + size])
            raw.release()
            buffers.recycle(bufferId)
            addr = self._nameCache.get(name)
            if addr is None:
                addr = self._decodeName(name)
            driver.call(self, self._deliver, data, addr)
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

    def _deliver(self, data: bytes, addr: Any) -> None:
        try:
            self.protocol.datagramReceived(data, addr)
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
            name = None
        else:
            assert addr is not None
            name = self._addressCache.get(addr)
            if name is None:
                name = self._encode(addr)
        if type(datagram) is not bytes:
            # As sendto: any bytes-like object, copied now.
            datagram = bytes(memoryview(datagram))
        if len(datagram) > _MAX_DATAGRAM[self.addressFamily]:
            raise error.MessageLengthError("message too long")
        self._queue.append(_Outgoing(self, datagram, name))
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
        datagrams as one chain of linked sendmsg operations.
        """
        self._flushQueued = False
        queue = self._queue
        if not queue or not hasattr(self, "socket") or self._sending:
            # (A chain in flight: _chainSent flushes again when it is in.)
            return False
        if len(queue) > _CHAIN_LIMIT:
            batch = queue[:_CHAIN_LIMIT]
            self._queue = queue[_CHAIN_LIMIT:]
            self.reactor._driver.queueFlush(self)
        else:
            batch = queue
            self._queue = []
        ring = self.reactor._driver.ring
        fd = self.socket.fileno()
        last = len(batch) - 1
        for i, out in enumerate(batch):
            ring.sendMessage(fd, out.data, out.name, -1, 0, i != last, out)
            self._sending += 1
        return False

    def _sent(self, out: _Outgoing, res: int) -> None:
        self._sending -= 1
        if res < 0 and self.connected:
            self._sendFailed(out, res)
        if not self._sending:
            self._chainSent()

    def _sendFailed(self, out: _Outgoing, res: int) -> None:
        if res == _ECANCELED:
            # An earlier datagram of the same chain failed, so this one was
            # never tried: it goes first in the next chain, keeping the
            # order.
            if self._retry is None:
                self._retry = []
            self._retry.append(out)
        elif res == _ECONNREFUSED:
            if self._connectedAddr:
                self.reactor._driver.call(self, self.protocol.connectionRefused)
        else:
            self._logError(res, "Could not send datagram")

    def _logError(self, res: int, why: str) -> None:
        """
        Log the error of a failed operation, in this port's log context.
        """
        self.reactor._driver.call(
            self, log.err, failure.Failure(OSError(-res, os.strerror(-res))), why
        )

    def _chainSent(self) -> None:
        """
        Every operation of the chain in flight has completed: send what
        waited for it (what the chain did not get to first), or finish
        closing.
        """
        retry, self._retry = self._retry, None
        if retry and self.connected:
            self._queue[:0] = retry
        if self._closeWhenSent is not None:
            if self._queue:
                self._flush()
            else:
                reason, self._closeWhenSent = self._closeWhenSent, None
                self.connectionLost(reason)
        elif self._queue:
            self.reactor._driver.queueFlush(self)

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
            # after the chain in flight: close once they have.
            self._closeWhenSent = reason if reason is not None else _NO_REASON
            return
        # The last chain, if any, is the kernel's to finish: it holds the
        # socket until then.
        if reason is _NO_REASON:
            reason = None
        log.msg(f"(UDP Port {self._realPortNumber} Closed)")
        self._realPortNumber = None
        self.maxThroughput = -1
        self._queue = []
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
