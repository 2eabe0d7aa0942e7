"""
Twisted plugin that makes C{--reactor=iouring} available to C{twistd} and
C{trial}.  Importing this module must not import the reactor itself.
"""

from twisted.application.reactors import Reactor

iouring = Reactor(
    "iouring",
    "uringreactor.reactor",
    "io_uring (Linux) completion-based reactor",
)
