"""
uringreactor: a Twisted reactor for Linux built on io_uring.

Install it before anything imports C{twisted.internet.reactor}::

    import uringreactor
    uringreactor.install()

or run C{twistd --reactor=iouring ...} / C{trial --reactor=iouring ...}.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

__version__ = "0.1.0"

FALLBACK_ENV = "URINGREACTOR_FALLBACK"


class IOUringFallbackWarning(RuntimeWarning):
    """
    io_uring was unavailable and the epoll reactor was installed instead,
    because the caller opted in to that fallback.
    """


def install(fallback: str | None = None) -> Any:
    """
    Install the io_uring reactor as the global Twisted reactor and return it.

    If io_uring cannot be set up this raises
    L{uringreactor.errors.IOUringUnavailable}, whose message names the cause
    and the fix.  There is no silent fallback.  A caller that would rather
    run on epoll than not at all (a test suite in a container whose seccomp
    profile refuses io_uring, say) opts in with C{fallback="epoll"} or the
    environment variable C{URINGREACTOR_FALLBACK=epoll}; the epoll reactor is
    then installed and one L{IOUringFallbackWarning} says why.

    @param fallback: C{"epoll"} to fall back to the epoll reactor, or
        L{None} to consult C{URINGREACTOR_FALLBACK}.
    """
    return _install(fallback)


def _install(fallback: str | None) -> Any:
    from twisted.internet.main import installReactor

    from uringreactor.errors import IOUringUnavailable

    if fallback is None:
        fallback = os.environ.get(FALLBACK_ENV) or None
    if fallback not in (None, "epoll"):
        raise ValueError(
            f"unsupported fallback {fallback!r}: the only fallback is 'epoll'"
        )
    reactor: Any
    try:
        from uringreactor.reactor import IOUringReactor

        reactor = IOUringReactor()
    except IOUringUnavailable as e:
        if fallback != "epoll":
            raise
        from twisted.internet.epollreactor import EPollReactor

        reactor = EPollReactor()
        warnings.warn(
            f"uringreactor: falling back to the epoll reactor, as asked "
            f"({FALLBACK_ENV} or fallback='epoll'). {e.reason or e.strerror}",
            IOUringFallbackWarning,
            stacklevel=3,
        )
    installReactor(reactor)
    return reactor


__all__ = ["install", "IOUringFallbackWarning", "__version__"]
