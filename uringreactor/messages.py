"""
Decoding what recvmsg leaves in memory: control messages (descriptors
passed with C{SCM_RIGHTS}), socket addresses, and the header that a
multishot recvmsg writes at the start of each provided buffer.
"""

from __future__ import annotations

import os
import socket
import struct

from uringreactor._liburing import ffi, lib

# struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type; its data starts
# at the next size_t boundary, as does the next control message.
_CMSG_HEADER = struct.Struct("@Nii")
_CMSG_ALIGN = struct.calcsize("@N")
_CMSG_DATA = (_CMSG_HEADER.size + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)

# struct io_uring_recvmsg_out: namelen, controllen, payloadlen, flags.
RECVMSG_OUT = struct.Struct("=IIII")
assert RECVMSG_OUT.size == lib.UR_RECVMSG_OUT_SIZE

# Room for control data in every receive of a UNIX stream transport.
CONTROL_SIZE: int = lib.UR_CONTROL_SIZE

Ancillary = list[tuple[int, int, bytes]]


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
