"""
Twisted's own reactor conformance tests (the ReactorBuilder suites), built
for the epoll reactor and the io_uring reactor side by side.

Importing this module sets L{ReactorBuilder._reactors} before the Twisted
test modules are imported, so each of their builders makes one test class
per reactor, then collects those classes here for trial.  Run it through
C{tests/twisted_conformance.py}, which compares the two reactors' results.
"""

from __future__ import annotations

import importlib

from twisted.internet.test import reactormixins

EPOLL = "twisted.internet.epollreactor.EPollReactor"
IOURING = "uringreactor.reactor.IOUringReactor"

reactormixins.ReactorBuilder._reactors = [EPOLL, IOURING]

MODULES = [
    "test_tcp",
    "test_core",
    "test_time",
    "test_threads",
    "test_unix",
    "test_udp",
    "test_udp_internals",
    "test_tls",
    "test_fdset",
    "test_process",
    "test_socket",
    "test_stdio",
    "test_sigchld",
    "test_endpoints",
    "test_protocol",
    "test_resolver",
    "test_posixbase",
    "test_serialport",
    "test_inotify",
    "test_filedescriptor",
    "test_abstract",
    "test_base",
    "test_default",
    "test_error",
    "test_address",
    "test_main",
]

_SUFFIXES = ("EPollReactorTests", "IOUringReactorTests")

for _name in MODULES:
    _module = importlib.import_module("twisted.internet.test." + _name)
    for _attr, _value in vars(_module).items():
        if isinstance(_value, type) and _attr.endswith(_SUFFIXES):
            # Re-home the class so that trial's worker processes, which
            # import tests by name, import this module (and so build the
            # same reactor list) rather than Twisted's.
            _alias = f"{_name}__{_attr}"
            _value.__module__ = __name__
            _value.__name__ = _value.__qualname__ = _alias
            globals()[_alias] = _value
