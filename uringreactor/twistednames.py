"""
The private names of Twisted (and one of CPython's) that this reactor
relies on, in one place.

The transports subclass Twisted's own (C{tcp.Server}, C{unix.Client},
C{udp.Port}, ...) and keep their machinery: the write buffer of
C{FileDescriptor}, the half-close and abort paths, the accept loop and the
descriptor passing of UNIX sockets.  Doing so means reading and calling
names Twisted does not promise to keep.  Each one is listed below with
where it lives and what the reactor does with it, so that a Twisted
release which renames one is caught by L{missing} (run by the project's
tests and by C{python -m uringreactor}) with the name spelled out, rather
than by an C{AttributeError} deep in a connection's life.

A name is found if its owner (a module or a class) has it as an attribute,
or, for an instance attribute that only C{__init__} or another method
sets, if a class of the owner's method resolution order assigns it as
C{self.<name>}.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from typing import Any, NamedTuple


class PrivateName(NamedTuple):
    """
    One private name the reactor relies on.

    @ivar owner: the dotted path of the module or class that defines it.
    @ivar name: the name itself.
    @ivar use: what the reactor does with it.
    """

    owner: str
    name: str
    use: str


_FD = "twisted.internet.abstract.FileDescriptor"
_TCP = "twisted.internet.tcp"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # The reactor.
    PrivateName(
        "twisted.internet.posixbase",
        "_PollLikeMixin",
        "a base of IOUringReactor: readiness-based readers and writers",
    ),
    PrivateName(
        "twisted.internet.posixbase._PollLikeMixin",
        "_doReadOrWrite",
        "runs doRead/doWrite of a readiness-based selectable when its poll completes",
    ),
    PrivateName(
        "twisted.internet.posixbase.PosixReactorBase",
        "_disconnectSelectable",
        "disconnects a selectable with the reason epoll would give",
    ),
    PrivateName(
        "twisted.internet.posixbase.PosixReactorBase",
        "_removeAll",
        "removeAll: readers and writers other than internal ones",
    ),
    PrivateName(
        "twisted.internet.tcp.Port",
        "_fromListeningDescriptor",
        "adoptStreamPort for TCP",
    ),
    PrivateName(
        "twisted.internet.unix.Port",
        "_fromListeningDescriptor",
        "adoptStreamPort for UNIX sockets",
    ),
    PrivateName(
        "twisted.internet.udp.Port",
        "_fromListeningDescriptor",
        "adoptDatagramPort",
    ),
    PrivateName(
        "twisted.internet.tcp.Server",
        "_fromConnectedSocket",
        "adoptStreamConnection for TCP",
    ),
    PrivateName(
        "twisted.internet.unix.Server",
        "_fromConnectedSocket",
        "adoptStreamConnection for UNIX sockets",
    ),
    # The write buffer, half-close and abort of FileDescriptor.
    PrivateName(
        _FD,
        "_tempDataBuffer",
        "the write buffer: the sender takes its pieces for one send",
    ),
    PrivateName(_FD, "_tempDataLen", "the length of that buffer"),
    PrivateName(_FD, "_isSendBufferFull", "whether write pauses a streaming producer"),
    PrivateName(
        _FD, "_maybePauseProducer", "pauses the producer when the buffer fills"
    ),
    PrivateName(
        _FD, "_postLoseConnection", "what loseConnection does once all is sent"
    ),
    PrivateName(
        _FD,
        "_closeWriteConnection",
        "loseWriteConnection once all is sent (the shutdown of the write side)",
    ),
    PrivateName(
        _FD, "_writeDisconnecting", "loseWriteConnection is waiting for the buffer"
    ),
    PrivateName(_FD, "_writeDisconnected", "the write side is shut down"),
    PrivateName(
        "twisted.internet.abstract",
        "_dataMustBeBytes",
        "writeSequence's check of each piece: the TypeError epoll raises",
    ),
    PrivateName(_FD, "_getLogPrefix", "the log prefix of a UNIX connection's protocol"),
    # TCP.
    PrivateName(
        "twisted.internet.tcp.Connection",
        "_dataReceived",
        "hands received bytes to the protocol and returns what doRead would",
    ),
    PrivateName(
        "twisted.internet.tcp.Connection",
        "_aborting",
        "abortConnection stops the sending of what is buffered",
    ),
    PrivateName(
        "twisted.internet.tcp.BaseClient",
        "_connectDone",
        "a completed connect makes the client's protocol",
    ),
    PrivateName(
        "twisted.internet.tcp.BaseClient",
        "_stopReadingAndWriting",
        "a failed connect cancels the connect in flight",
    ),
    PrivateName(
        "twisted.internet.tcp.Server", "_addressType", "the address class of getHost"
    ),
    PrivateName(_TCP, "_getsockname", "getHost of an accepted connection"),
    PrivateName(_TCP, "_accept", "the accept loop when multishot accept is off"),
    PrivateName(
        _TCP,
        "_reservedFD",
        "the descriptor reserved against EMFILE, released to refuse a connection",
    ),
    PrivateName(
        "twisted.internet.tcp.Port", "_buildAddr", "an accepted peer's address"
    ),
    PrivateName("twisted.internet.tcp.Port", "_logger", "the port's log messages"),
    PrivateName(
        "twisted.internet.tcp.Port",
        "_shouldShutdown",
        "whether closing a socket shuts it down first (an adopted port's is not)",
    ),
    # UNIX sockets.
    PrivateName(
        "twisted.internet.unix._SendmsgMixin",
        "_sendmsgQueue",
        "the descriptors waiting to be sent with the next bytes",
    ),
    PrivateName(
        "twisted.internet.unix._SendmsgMixin",
        "_fileDescriptorBufferSize",
        "how many waiting descriptors fill the send buffer",
    ),
    PrivateName(
        "twisted.internet.unix._SendmsgMixin",
        "_ancillaryLevelSOLSOCKETTypeSCMRIGHTS",
        "hands received descriptors to the protocol",
    ),
    # UDP.
    PrivateName(
        "twisted.internet.udp.Port",
        "_connectedAddr",
        "the peer of a connected port, for writes and refusals",
    ),
    PrivateName(
        "twisted.internet.udp.Port",
        "_realPortNumber",
        "the number in the port's closing message",
    ),
    # CPython.
    PrivateName(
        "socket.socket",
        "_accept",
        "accepts without making a socket object, when multishot accept is off",
    ),
)


def _resolve(path: str) -> Any:
    """
    The module or class at a dotted path.

    @raise ImportError: or L{AttributeError}, if there is none.
    """
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


@functools.cache
def _source(klass: type) -> str:
    # inspect.getsource parses the class's whole module: once per class.
    try:
        return inspect.getsource(klass)
    except (OSError, TypeError):
        return ""


def _assignsInstanceAttribute(cls: type, name: str) -> bool:
    assignment = re.compile(rf"\bself\.{re.escape(name)}\b\s*(?::[^=\n]*)?=(?!=)")
    return any(assignment.search(_source(klass)) for klass in inspect.getmro(cls))


def has(owner: str, name: str) -> bool:
    """
    Whether C{owner} (a dotted path) still defines C{name}.
    """
    try:
        obj = _resolve(owner)
    except (ImportError, AttributeError):
        return False
    if hasattr(obj, name):
        return True
    return inspect.isclass(obj) and _assignsInstanceAttribute(obj, name)


def missing() -> list[str]:
    """
    The private names this Twisted no longer defines, each as a sentence
    naming it, its owner and what the reactor needs it for; empty when all
    are there.
    """
    return [
        f"{p.owner}.{p.name} is missing (uringreactor uses it: {p.use})"
        for p in PRIVATE_NAMES
        if not has(p.owner, p.name)
    ]
