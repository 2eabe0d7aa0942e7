"""
The memory of message operations: control messages (descriptors passed
with C{SCM_RIGHTS}), socket addresses in C{struct sockaddr} form, and the
header that a multishot recvmsg writes at the start of each provided
buffer.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from uringreactor._liburing import ffi, lib

# struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type; its data starts
# at the next size_t boundary, as does the next control message.
_CMSG_HEADER = struct.Struct("@Nii")
_CMSG_ALIGN = struct.calcsize("@N")
_CMSG_DATA = (_CMSG_HEADER.size + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)

_SHORT = struct.Struct("=H")
_PORT = struct.Struct("!H")
_SCOPE = struct.Struct("=I")

# struct io_uring_recvmsg_out: namelen, controllen, payloadlen, flags.
RECVMSG_OUT = struct.Struct("=IIII")
assert RECVMSG_OUT.size == lib.UR_RECVMSG_OUT_SIZE

# Room for control data in every receive of a UNIX stream transport.
CONTROL_SIZE: int = lib.UR_CONTROL_SIZE

# Room for any socket address (a struct sockaddr_storage).
NAME_SIZE: int = lib.UR_NAME_SIZE

Ancillary = list[tuple[int, int, bytes]]


def newMessage() -> Any:
    """
    The memory of one message operation: a C{struct ur_msg} (header, one
    iovec, room for an address and for control data).
    """
    return ffi.new("struct ur_msg *")


def parseControl(control: bytes) -> Ancillary:
    """
    Split control data into C{(level, type, data)} triples, the form
    L{socket.socket.recvmsg} returns.
    """
    messages = []
    offset = 0
    end = len(control)
    while offset + _CMSG_DATA <= end:
        length, level, kind = _CMSG_HEADER.unpack_from(control, offset)
        if length < _CMSG_DATA:
            break
        messages.append((level, kind, control[offset + _CMSG_DATA : offset + length]))
        offset += (length + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
    return messages


def receivedControl(msg: object) -> Ancillary:
    """
    The control messages a completed single-shot recvmsg left in C{msg}
    (a C{struct ur_msg *}); usually none.
    """
    length = lib.ur_msg_controllen(msg)
    if not length:
        return []
    return parseControl(ffi.buffer(lib.ur_msg_control(msg), length)[:])


def receivedName(msg: object) -> bytes:
    """
    The source address (a C{struct sockaddr}) a completed single-shot
    recvmsg left in C{msg}.
    """
    return ffi.buffer(lib.ur_msg_name(msg), lib.ur_msg_namelen(msg))[:]


def descriptorsIn(ancillary: Ancillary) -> list[int]:
    """
    The descriptors passed in C{SCM_RIGHTS} control messages.
    """
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(data) // 4
            fds.extend(struct.unpack(f"{count}i", data[: count * 4]))
    return fds


def closeDescriptors(ancillary: Ancillary) -> None:
    """
    Close the descriptors passed in C{ancillary}: they arrived for a
    transport that is gone, and nobody else will.
    """
    for fd in descriptorsIn(ancillary):
        try:
            os.close(fd)
        except OSError:
            pass


def decodeAddress(raw: bytes) -> tuple[str, int]:
    """
    C{(host, port)} for a C{struct sockaddr_in} or C{sockaddr_in6}, as the
    epoll reactor passes it to C{datagramReceived} (no flow information;
    the scope of a link-local IPv6 address as C{%interface}).
    """
    family = _SHORT.unpack_from(raw)[0]
    port = _PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), port
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    scope = _SCOPE.unpack_from(raw, 24)[0]
    if scope:
        try:
            host += "%" + socket.if_indextoname(scope)
        except OSError:
            host += "%" + str(scope)
    return host, port


def encodeAddress(family: int, addr: Any) -> bytes:
    """
    The C{struct sockaddr} for C{(host, port)} in C{family}, as C{sendto}
    would build it; raises what C{sendto} raises for a bad port.
    """
    host, port = addr[0], addr[1]
    if not isinstance(port, int):
        raise TypeError(
            f"'{type(port).__name__}' object cannot be interpreted as an integer"
        )
    if not 0 <= port <= 65535:
        raise OverflowError("sendto(): port must be 0-65535.")
    if family == socket.AF_INET:
        packed = (
            b"\xff\xff\xff\xff" if host == "<broadcast>" else socket.inet_aton(host)
        )
        return _SHORT.pack(family) + _PORT.pack(port) + packed + bytes(8)
    scope = 0
    if "%" in host:
        host, _, name = host.partition("%")
        scope = int(name) if name.isdigit() else socket.if_nametoindex(name)
    return (
        _SHORT.pack(family)
        + _PORT.pack(port)
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, host)
        + _SCOPE.pack(scope)
    )
