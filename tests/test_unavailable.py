"""
When io_uring is refused, install() says why and how to fix it; the epoll
fallback happens only when asked for, with one warning.

The refusals are real: a child process loads a seccomp filter that makes
io_uring_setup fail with EPERM (as Docker's default profile does) or ENOSYS
(as podman's does) before importing the reactor.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from uringreactor import errors

pyseccomp = pytest.importorskip(
    "pyseccomp", reason="pyseccomp (and the system libseccomp) is needed"
)

CHILD = textwrap.dedent(
    """
    import errno, os, sys, warnings
    import pyseccomp
    refusal = getattr(errno, sys.argv[1])
    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    f.add_rule(pyseccomp.ERRNO(refusal), "io_uring_setup")
    f.load()
    mode = sys.argv[2]
    import uringreactor
    from uringreactor.errors import IOUringUnavailable
    if mode == "plain":
        try:
            uringreactor.install()
        except IOUringUnavailable as e:
            print("ERRNO", e.errno)
            print("MESSAGE", e.strerror)
            sys.exit(3)
        print("INSTALLED")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if mode == "fallback-arg":
                uringreactor.install(fallback="epoll")
            else:
                uringreactor.install()
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol, ClientFactory
        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)
        class Client(Protocol):
            def connectionMade(self):
                self.transport.write(b"ping")
            def dataReceived(self, data):
                print("ECHO", data.decode())
                reactor.stop()
        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Client))
        reactor.callLater(10, reactor.stop)
        reactor.run()
        print("REACTOR", type(reactor).__name__)
        print("WARNINGS", len(caught))
        for w in caught:
            print("WARNING", w.category.__name__, str(w.message))
    """
)


def _child(refusal: str, mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)
    environ.pop("URINGREACTOR_FALLBACK", None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", CHILD, refusal, mode],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_seccompEPERMExplainsDockerAndFix() -> None:
    result = _child("EPERM", "plain")
    assert result.returncode == 3, result.stderr
    assert "ERRNO 1" in result.stdout
    message = result.stdout.split("MESSAGE", 1)[1]
    assert "EPERM" in message
    assert "seccomp" in message
    assert "Docker" in message
    assert "--security-opt seccomp=" in message
    assert "fallback='epoll'" in message


def test_seccompENOSYSExplainsFilterAndFix() -> None:
    result = _child("ENOSYS", "plain")
    assert result.returncode == 3, result.stderr
    assert "ERRNO 38" in result.stdout
    message = result.stdout.split("MESSAGE", 1)[1]
    assert "ENOSYS" in message
    assert "seccomp filter" in message
    assert "seccomp=unconfined" in message


def test_fallbackArgumentInstallsEpollWithOneWarning() -> None:
    result = _child("EPERM", "fallback-arg")
    assert result.returncode == 0, result.stderr
    assert "ECHO ping" in result.stdout
    assert "REACTOR EPollReactor" in result.stdout
    assert "WARNINGS 1" in result.stdout
    warning = result.stdout.split("WARNING IOUringFallbackWarning", 1)[1]
    assert "epoll" in warning and "seccomp" in warning


def test_fallbackEnvironmentVariable() -> None:
    result = _child("EPERM", "fallback-env", URINGREACTOR_FALLBACK="epoll")
    assert result.returncode == 0, result.stderr
    assert "REACTOR EPollReactor" in result.stdout
    assert "WARNINGS 1" in result.stdout


def test_noFallbackWithoutOptIn() -> None:
    """
    Without the opt-in nothing falls back, even though epoll would work.
    """
    result = _child("EPERM", "plain")
    assert "INSTALLED" not in result.stdout


def test_unknownFallbackRefused() -> None:
    import uringreactor

    with pytest.raises(ValueError, match="only fallback is 'epoll'"):
        uringreactor._install("poll")


def test_sysctlCauseNamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With kernel.io_uring_disabled set, EPERM names the sysctl rather than
    seccomp.
    """
    monkeypatch.setattr(errors, "_disabledSysctl", lambda: "2")
    message = errors.explainSetupError(errno.EPERM).strerror or ""
    assert "kernel.io_uring_disabled is 2" in message
    assert "sysctl -w kernel.io_uring_disabled=0" in message


def _withoutIpcLock(script: str, memlockKiB: int) -> subprocess.CompletedProcess[str]:
    """
    Run C{script} in a Python child without CAP_IPC_LOCK (as in a
    container, or as any user but root) and with a locked-memory limit of
    C{memlockKiB}.
    """
    if os.geteuid() != 0 or not shutil.which("capsh"):
        pytest.skip("needs root and capsh to drop CAP_IPC_LOCK")
    limit = memlockKiB * 1024
    prelude = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_MEMLOCK, ({limit}, {limit}))\n"
    )
    return subprocess.run(
        [
            "capsh",
            "--drop=cap_ipc_lock",
            "--",
            "-c",
            f'{sys.executable} -c "$0"',
            prelude + textwrap.dedent(script),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@functools.cache
def _ringsCharged() -> bool:
    """
    Whether this kernel charges io_uring rings to RLIMIT_MEMLOCK: kernels
    before 5.12 did; 5.12 moved ring memory to the memory cgroup (and the
    5.10 stable releases that carry 5.15's io_uring followed); newer ones
    charge the rings to it again.  Tried, not inferred from the version.
    """
    result = _withoutIpcLock(
        """
        from uringreactor._liburing import ffi, lib
        ring = ffi.new("struct ur_ring *")
        print("RC", lib.ur_ring_init(ring, 64, 128, 0))
        """,
        memlockKiB=4,
    )
    assert "RC" in result.stdout, result.stdout + result.stderr
    return int(result.stdout.split("RC", 1)[1].split()[0]) == -errno.ENOMEM


def _needCharging() -> None:
    if not _ringsCharged():
        pytest.skip(
            "needs rings charged to RLIMIT_MEMLOCK, which this kernel does "
            "not do (a ring fit under a 4 KiB limit): mainline charged them "
            "before 5.12, Debian's 5.10 to 7.3 kernels do not"
        )


def test_memlockExhaustionExplained() -> None:
    """
    A process without CAP_IPC_LOCK (as in most containers) whose
    locked-memory limit is used up gets ENOMEM from io_uring_setup, and an
    error that names the limit and how to raise it.  Rings of dropped
    reactors are collected first, so they do not count.
    """
    if os.geteuid() != 0 or not shutil.which("capsh"):
        pytest.skip("needs root and capsh to drop CAP_IPC_LOCK")
    _needCharging()
    script = textwrap.dedent(
        """
        import gc, resource
        # The limit is per user, so other processes' rings count too: find
        # how many this process can hold, rather than assuming.
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (4 << 20, 4 << 20))
        from uringreactor.reactor import IOUringReactor
        from uringreactor.errors import IOUringUnavailable
        def fill():
            kept = []
            try:
                while True:
                    kept.append(IOUringReactor())
            except IOUringUnavailable as e:
                return kept, e
        kept, _ = fill()
        print("CAPACITY", len(kept))
        del kept
        gc.collect()
        for _ in range(100):
            IOUringReactor()      # dropped at once: collected on demand
        print("DROPPED OK")
        kept, e = fill()
        print("KEPT", len(kept))
        print("MESSAGE", e.strerror)
        """
    )
    result = subprocess.run(
        [
            "capsh",
            "--drop=cap_ipc_lock",
            "--",
            "-c",
            f'{sys.executable} -c "$0"',
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CAPACITY" in result.stdout, result.stdout + result.stderr
    capacity = int(result.stdout.split("CAPACITY", 1)[1].split()[0])
    if capacity == 0:
        # The limit is accounted per user: rings held by other processes of
        # the same user (outside a container too) can use all of it.
        pytest.skip("this user's locked memory is already used up elsewhere")
    assert "DROPPED OK" in result.stdout, result.stdout + result.stderr
    assert "KEPT" in result.stdout, result.stdout + result.stderr
    message = result.stdout.split("MESSAGE", 1)[1]
    assert "ENOMEM" in message
    # Rings shrink to fit before they fail (the smallest is charged at
    # least 8 KiB), so the limit holds a few hundred at most.
    assert capacity < 512
    assert "RLIMIT_MEMLOCK, here 4096 KiB" in message
    assert "--ulimit memlock=-1" in message


def test_oldKernelCauseNamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_kernelAtLeast", lambda major, minor: False)
    message = errors.explainSetupError(errno.ENOSYS).strerror or ""
    assert "too old" in message


def test_smallMemlockLimitGetsASmallerRing() -> None:
    """
    With the 64 KiB locked-memory limit that kernels before 5.16 give every
    process (Debian 11, for one), a ring of the default size does not fit:
    the reactor takes a smaller one, says so once, and works.
    """
    _needCharging()
    result = _withoutIpcLock(
        """
        import sys
        from twisted.logger import globalLogPublisher
        seen = []
        globalLogPublisher.addObserver(
            lambda e: seen.append(e.get("log_format", "")))
        from uringreactor.reactor import IOUringReactor
        from uringreactor.errors import IOUringUnavailable
        try:
            reactor = IOUringReactor()
        except IOUringUnavailable as e:
            print("UNAVAILABLE", e.strerror)
            sys.exit(0)
        print("ENTRIES", reactor._ring.entries)
        print("WARNINGS", sum("ring reduced" in f for f in seen))
        from twisted.internet.protocol import Factory, Protocol, ClientFactory
        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)
        class Client(Protocol):
            def connectionMade(self):
                self.transport.write(b"x" * 100000)
                self.got = 0
            def dataReceived(self, data):
                self.got += len(data)
                if self.got == 100000:
                    print("ECHOED")
                    reactor.stop()
        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Client))
        reactor.callLater(30, reactor.stop)
        reactor.run()
        """,
        memlockKiB=64,
    )
    out = result.stdout
    if "UNAVAILABLE" in out:
        # The limit is accounted per user: other processes' rings may use it.
        pytest.skip("this user's locked memory is already used up elsewhere")
    assert "ENTRIES" in out, out + result.stderr
    entries = int(out.split("ENTRIES", 1)[1].split()[0])
    assert 32 <= entries < 1024
    assert "WARNINGS 1" in out
    assert "ECHOED" in out, out + result.stderr


def test_memlockTooSmallForAnyRing() -> None:
    """
    Below what even the smallest ring needs, the error names the limit.
    """
    _needCharging()
    result = _withoutIpcLock(
        """
        from uringreactor.reactor import IOUringReactor
        from uringreactor.errors import IOUringUnavailable
        try:
            IOUringReactor()
        except IOUringUnavailable as e:
            print("MESSAGE", e.strerror)
        else:
            print("CREATED")
        """,
        memlockKiB=4,
    )
    assert "MESSAGE" in result.stdout, result.stdout + result.stderr
    message = result.stdout.split("MESSAGE", 1)[1]
    assert "ENOMEM" in message
    assert "RLIMIT_MEMLOCK, here 4 KiB" in message
    assert "ulimit -l" in message
