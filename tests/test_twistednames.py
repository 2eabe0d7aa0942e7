"""
The private names of Twisted the reactor relies on are listed in
L{uringreactor.twistednames}, every one exists in the installed Twisted,
and a renamed one is reported by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.internet import tcp

from uringreactor import diagnose, twistednames
from uringreactor.twistednames import PRIVATE_NAMES, has, missing

_PACKAGE = Path(twistednames.__file__).parent

# Private attributes of the package's own classes that happen to share a
# name with one of Twisted's: Ring._started is the ring's, not ReactorBase's.
_OWN_NAMES = {"_started"}


def test_everyPrivateNameExists() -> None:
    """
    The installed Twisted defines every private name the reactor uses.
    """
    assert missing() == [], "\n".join(missing())


def test_aRenamedMethodIsNamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A method a Twisted release renamed is reported with its owner and what
    the reactor needs it for.
    """
    monkeypatch.delattr(tcp.Connection, "_dataReceived")
    assert missing() == [
        "twisted.internet.tcp.Connection._dataReceived is missing (uringreactor"
        " uses it: hands received bytes to the protocol and returns what doRead"
        " would)"
    ]


def test_aRenamedModuleFunctionIsNamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tcp, "_getsockname")
    assert [line.split(" is ")[0] for line in missing()] == [
        "twisted.internet.tcp._getsockname"
    ]


def test_instanceAttributesAreFoundInTheirClassesMethods() -> None:
    """
    An attribute that only a method sets is found in the source of the
    owner's classes; a name no class assigns is not.
    """
    assert has("twisted.internet.abstract.FileDescriptor", "_tempDataBuffer")
    assert has("twisted.internet.unix.Client", "_sendmsgQueue")
    assert not has("twisted.internet.abstract.FileDescriptor", "_tempDataBuffers")
    assert not has("twisted.internet.noSuchModule.Class", "_tempDataBuffer")


def test_everyPrivateTwistedNameUsedIsListed() -> None:
    """
    Every private attribute the package's code reads or calls that one of
    the listed Twisted owners defines is itself listed: the list stays the
    one place.
    """
    used: dict[str, str] = {}
    for path in sorted(_PACKAGE.glob("*.py")):
        if path.name == "twistednames.py":
            continue
        for name in re.findall(r"\.(_[A-Za-z]\w*)\b", path.read_text()):
            used.setdefault(name, path.name)
    owners = {p.owner for p in PRIVATE_NAMES}
    listed = {p.name for p in PRIVATE_NAMES}
    unlisted = {
        name: where
        for name, where in used.items()
        if name not in listed
        and name not in _OWN_NAMES
        and any(has(owner, name) for owner in owners)
    }
    assert unlisted == {}


def test_diagnosticReportsTheNames() -> None:
    lines: list[str] = []
    diagnose.report(lines.append)
    assert f"twisted private names: all {len(PRIVATE_NAMES)} present" in lines


def test_diagnosticNamesAMissingOne(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tcp.Port, "_buildAddr")
    lines: list[str] = []
    diagnose.report(lines.append)
    assert (
        "  twisted.internet.tcp.Port._buildAddr is missing (uringreactor uses it:"
        " an accepted peer's address)" in lines
    )
