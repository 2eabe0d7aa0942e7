"""
The log context of each dispatch, made cheap.

Twisted runs every C{doRead}/C{doWrite} inside
C{log.callWithLogger(selectable, ...)}, so that log events emitted by a
protocol carry its C{logPrefix()} as their C{system}.  That call copies the
current log context dictionary and builds two new ones every time, over a
microsecond per call, and an io_uring reactor dispatches more often than
anything else it does.

L{LogContexts} gives the same context for less: once per event-loop
iteration it finds the thread's context stack and the log context in force;
entering a transport's context is then making one small object (the
context dictionary is built from it only if something logs), one
C{list.append} and one C{list.pop}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python import context, log
from twisted.python.log import ILogContext


def _prefix(obj: Any) -> str:
    try:
        return str(obj.logPrefix())
    except KeyboardInterrupt:
        raise
    except BaseException:
        log.err(system="(buggy logPrefix method)")
        return "(buggy logPrefix method)"


class ContextEntry:
    """
    A log-context stack entry for one object: it holds the log context
    C{{ILogContext: {..., "system": obj.logPrefix()}}} of
    C{log.callWithLogger}, built only when something asks for it (something
    logs).  Most events log nothing, so most entries are never read: making
    one is one small object, where the dictionaries cost three.

    The context stack asks its entries for keys with C{entry[key]} and
    moves on at C{KeyError} (L{twisted.python.context.ContextTracker}), which
    is all an entry supports.
    """

    __slots__ = ("obj", "base")

    def __init__(self, obj: Any, base: dict[str, Any]) -> None:
        self.obj = obj
        self.base = base

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if key is not ILogContext:
            raise KeyError(key)
        obj = self.obj
        try:
            prefix = obj.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            prefix = _prefix(obj)
        logContext = self.base.copy()
        logContext["system"] = prefix
        return logContext


class LogContexts:
    """
    The reactor thread's log-context stack, and the per-object contexts to
    push on it.
    """

    def __init__(self) -> None:
        self.stack: list[Any] | None = None
        self.base: dict[str, Any] = {}

    def refresh(self) -> None:
        """
        Look up the context stack and the log context in force; call once per
        iteration, on the reactor thread.
        """
        tracker = context.theContextTracker
        if isinstance(tracker, context.ThreadedContextTracker):
            current = tracker.currentContext()
            self.stack = current.contexts
            self.base = current.getContext(ILogContext) or {}
        else:
            # Someone installed their own tracker: use the general path.
            self.stack = None

    def call(self, obj: Any, func: Callable[..., Any], *args: Any) -> Any:
        """
        Like C{log.callWithLogger(obj, func, *args)}: call C{func} with C{obj}'s
        log prefix as the C{system} of log events, and log (rather than
        raise) an exception it raises.
        """
        stack = self.stack
        if stack is None:
            return log.callWithLogger(obj, func, *args)
        entry = ContextEntry(obj, self.base)
        stack.append(entry)
        try:
            return func(*args)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=entry[ILogContext]["system"])
            return None
        finally:
            stack.pop()
