"""
Real programs, run as a user would: the twistd/trial plugin, twistd web
serving files to curl, and Ctrl-C stopping the reactor cleanly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(path)


def _defaultSigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _waitForPort(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"server exited early ({proc.returncode}):\n{out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


def test_twistdListsTheReactor(tmp_path: Path) -> None:
    """
    The plugin is visible from any directory.
    """
    result = subprocess.run(
        [_script("twistd"), "--help-reactors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "iouring" in result.stdout, result.stdout + result.stderr


def test_trialRunsOnTheReactor(tmp_path: Path) -> None:
    """
    trial --reactor=iouring runs a project's tests on this reactor.
    """
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            from twisted.internet import reactor
            from twisted.internet.protocol import Factory, Protocol
            from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
            from twisted.trial.unittest import TestCase

            class Echo(Protocol):
                def dataReceived(self, data):
                    self.transport.write(data)

            class ReactorTests(TestCase):
                def test_reactor(self):
                    self.assertEqual(type(reactor).__name__, "IOUringReactor")

                def test_echo(self):
                    port = reactor.listenTCP(0, Factory.forProtocol(Echo),
                                             interface="127.0.0.1")
                    self.addCleanup(port.stopListening)
                    got = []
                    class Client(Protocol):
                        def connectionMade(self):
                            self.transport.write(b"trial")
                        def dataReceived(self, data):
                            got.append(data)
                            self.transport.loseConnection()
                    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
                    d = connectProtocol(ep, Client())
                    from twisted.internet.task import deferLater
                    d.addCallback(lambda p: deferLater(reactor, 0.2, lambda: None))
                    d.addCallback(lambda _: self.assertEqual(b"".join(got), b"trial"))
                    return d
            """
        )
    )
    result = subprocess.run(
        [_script("trial"), "--reactor=iouring", "test_sample"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=2)" in result.stdout


def test_twistdWebServesFilesToCurl(tmp_path: Path) -> None:
    """
    twistd -n --reactor=iouring web serves a large static file byte-exact,
    and SIGINT stops it cleanly.
    """
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    root = tmp_path / "site"
    root.mkdir()
    payload = os.urandom(1 << 20) * 24
    (root / "big.bin").write_bytes(payload)
    (root / "index.html").write_text("<h1>hello from io_uring</h1>")
    port = _freePort()
    proc = subprocess.Popen(
        [
            _script("twistd"),
            "-n",
            "--reactor=iouring",
            "--pidfile=",
            "web",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--path",
            str(root),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # As started from a terminal: a test run launched in the background
        # by a non-interactive shell ignores SIGINT, and an ignored SIGINT
        # stays ignored across exec, so twistd would never see it.
        preexec_fn=_defaultSigint,
    )
    try:
        _waitForPort(port, proc, time.monotonic() + 30)
        index = subprocess.run(
            [curl, "-sS", f"http://127.0.0.1:{port}/index.html"],
            capture_output=True,
            timeout=60,
        )
        assert index.stdout == b"<h1>hello from io_uring</h1>"
        out = tmp_path / "download.bin"
        big = subprocess.run(
            [curl, "-sS", "-o", str(out), f"http://127.0.0.1:{port}/big.bin"],
            capture_output=True,
            timeout=120,
        )
        assert big.returncode == 0, big.stderr
        assert (
            hashlib.sha256(out.read_bytes()).digest()
            == hashlib.sha256(payload).digest()
        )
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"twistd did not stop on SIGINT:\n{output}") from None
        log = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # twistd, on every reactor, ends by re-raising the signal it received
    # once shutdown is complete.
    assert proc.returncode in (0, -signal.SIGINT), log
    assert "IOUringReactor" in log
    assert "Received SIGINT, shutting down." in log
    assert "Main loop terminated." in log


def test_daemonizedTwistdKeepsServing(tmp_path: Path) -> None:
    """
    C{twistd} without C{-n} forks twice after the reactor is built and
    before it runs: the daemon's reactor keeps working past the first uses
    of everything it set up before the fork, e.g. more receives than the
    provided-buffer ring has buffers.
    """
    twistd = _script("twistd")
    port = _freePort()
    (tmp_path / "index.html").write_bytes(b"from the daemon\n")
    pidfile = tmp_path / "twistd.pid"
    subprocess.run(
        [
            twistd,
            "--reactor=iouring",
            f"--pidfile={pidfile}",
            f"--logfile={tmp_path / 'twistd.log'}",
            "web",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--path",
            str(tmp_path),
        ],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        import http.client

        bodies = set()
        served = 0
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(600):
                connection.request("GET", "/index.html")
                response = connection.getresponse()
                bodies.add(response.read())
                served += response.status == 200
            connection.close()
        assert served == 1800
        assert bodies == {b"from the daemon\n"}
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    log = (tmp_path / "twistd.log").read_text()
    assert "reactor class: uringreactor.reactor.IOUringReactor" in log
    assert "Traceback" not in log
