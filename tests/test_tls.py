"""
TLS on the io_uring reactor, used as a user would: an echo server with a
real (self-signed, generated at test time) certificate, and a client that
verifies it against that certificate as its only trust root.

Each case runs in a child process that installs its reactor fresh, the
io_uring one or, to show the test program itself is right, epoll.  The
child sends a mebibyte of random bytes between small messages, counts the
echo, closes once it has everything and prints what it saw: the SHA-256 of
what each side received, the peer certificate's common name and how each
side's connection ended.  Covered: C{listenSSL}/C{connectSSL}, the TLS
endpoints (C{SSL4ServerEndpoint}, C{wrapClientTLS}), C{startTLS} on both
ends of a plain TCP connection after a plaintext exchange, and a client
refusing a certificate it does not trust or that names another host.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Twisted[tls] (a test dependency) brings pyOpenSSL, service_identity and
# cryptography.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

REACTOR_CLASSES = {"iouring": "IOUringReactor", "epoll": "EPollReactor"}

BLOB_SIZE = 1024 * 1024

# The child's timeout guard, and the parent's, in seconds.
CHILD_TIMEOUT = 30
PARENT_TIMEOUT = 60

CHILD = textwrap.dedent(
    r"""
    import hashlib, os, sys

    reactorName, mode, directory, timeout = sys.argv[1:5]
    if reactorName == "iouring":
        import uringreactor
        uringreactor.install()
    else:
        from twisted.internet import epollreactor
        epollreactor.install()

    from twisted.internet import reactor, ssl
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ClientEndpoint,
        connectProtocol,
        wrapClientTLS,
    )
    from twisted.internet.error import ConnectionDone
    from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
    from twisted.internet.protocol import ClientFactory, Factory, Protocol
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )

    def path(name):
        return os.path.join(directory, name)

    def read(name):
        with open(path(name), "rb") as f:
            return f.read()

    certPEM = read("cert.pem")
    keyPEM = read("key.pem")
    blob = read("payload.bin")
    WRITES = (
        [b"small %03d\n" % i for i in range(50)]
        + [blob]
        + [b"tail %03d\n" % i for i in range(50)]
    )
    TOTAL = sum(map(len, WRITES))
    SENT = hashlib.sha256(b"".join(WRITES)).hexdigest()

    # The client trusts only the generated certificate (or, when the refusal
    # is under test, only a stranger's) and checks the name "localhost".
    trustName = "stranger.pem" if mode == "stranger" else "cert.pem"
    hostname = "wrong.example" if mode == "wronghost" else "localhost"
    clientOptions = ssl.optionsForClientTLS(
        hostname, trustRoot=ssl.Certificate.loadPEM(read(trustName))
    )
    serverOptions = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM).options()

    progress = {"client": 0, "server": 0, "handshake": False}
    clientDone = Deferred()
    serverDone = Deferred()


    class Counting:
        # Counts and hashes what arrives; the client side closes once the
        # whole echo is in.
        side = "server"

        def begin(self):
            self.digest = hashlib.sha256()
            self.count = 0

        def received(self, data):
            self.digest.update(data)
            self.count += len(data)
            progress[self.side] = self.count


    class Echo(Counting, Protocol):
        def connectionMade(self):
            self.begin()

        def dataReceived(self, data):
            self.received(data)
            self.transport.write(data)

        def connectionLost(self, reason):
            serverDone.callback(
                (self.count, self.digest.hexdigest(),
                 ISSLTransport.providedBy(self.transport), reason)
            )


    class StartTLSEcho(Counting, LineReceiver):
        def connectionMade(self):
            self.begin()

        def lineReceived(self, line):
            if line == b"HELLO":
                self.sendLine(b"HELLO plain")
            elif line == b"STARTTLS":
                self.sendLine(b"GO")
                self.transport.startTLS(serverOptions)
                self.setRawMode()
            else:
                self.sendLine(b"UNEXPECTED " + line)
                self.transport.loseConnection()

        def rawDataReceived(self, data):
            self.received(data)
            self.transport.write(data)

        def connectionLost(self, reason):
            serverDone.callback(
                (self.count, self.digest.hexdigest(),
                 ISSLTransport.providedBy(self.transport), reason)
            )


    @implementer(IHandshakeListener)
    class Checking(Counting):
        side = "client"
        peer = None
        plaintext = ()

        def handshakeCompleted(self):
            progress["handshake"] = True
            cert = ssl.Certificate.peerFromTransport(self.transport)
            self.peer = cert.getSubject().commonName.decode()

        def received(self, data):
            Counting.received(self, data)
            if self.count >= TOTAL:
                self.transport.loseConnection()

        def sendAll(self):
            for data in WRITES:
                self.transport.write(data)

        def connectionLost(self, reason):
            clientDone.callback(
                (self.count, self.digest.hexdigest(), self.peer, reason,
                 list(self.plaintext))
            )


    class Client(Checking, Protocol):
        def connectionMade(self):
            self.begin()
            # Written before the handshake: the TLS layer holds it until the
            # server's certificate is verified.
            self.sendAll()

        def dataReceived(self, data):
            self.received(data)


    class StartTLSClient(Checking, LineReceiver):
        def connectionMade(self):
            self.begin()
            self.plaintext = []
            self.sendLine(b"HELLO")

        def lineReceived(self, line):
            self.plaintext.append(line.decode())
            if line == b"HELLO plain":
                self.sendLine(b"STARTTLS")
            elif line == b"GO":
                self.transport.startTLS(clientOptions)
                self.setRawMode()
                self.sendAll()
            else:
                self.transport.loseConnection()

        def rawDataReceived(self, data):
            self.received(data)


    exitCode = [1]
    ports = []


    def describe(reason):
        return f"{reason.type.__name__} {reason.getErrorMessage()!r}"


    def report(results):
        (cCount, cDigest, peer, cReason, plaintext) = results[0]
        (sCount, sDigest, sTLS, sReason) = results[1]
        print("REACTOR", type(reactor).__name__)
        print("SENT", TOTAL, SENT)
        print("CLIENT_RECEIVED", cCount, cDigest)
        print("SERVER_RECEIVED", sCount, sDigest)
        print("PLAINTEXT", ",".join(plaintext))
        print("PEER_CN", peer)
        print("SERVER_TLS", sTLS)
        print("CLIENT_LOST", describe(cReason))
        print("SERVER_LOST", describe(sReason))
        if mode in ("stranger", "wronghost"):
            ok = cCount == 0 and sCount == 0 and not cReason.check(
                ConnectionDone
            )
            print("REFUSED" if ok else "NOT REFUSED")
        else:
            ok = (
                cCount == sCount == TOTAL
                and cDigest == sDigest == SENT
                and peer == "localhost"
                and sTLS
            )
            print("VERIFIED" if ok else "MISMATCH")
        exitCode[0] = 0 if ok else 1


    def failed(failure):
        print("FAILED", failure.getTraceback())


    def finish(_):
        for port in ports:
            port.stopListening()
        reactor.stop()


    def connect(listening):
        ports.append(listening)
        port = getattr(listening.getHost(), "port", None)
        if mode == "startTLS":
            reactor.connectTCP(
                "127.0.0.1", port, ClientFactory.forProtocol(StartTLSClient)
            )
        elif mode == "startTLS-unix":
            reactor.connectUNIX(
                listening.getHost().name, ClientFactory.forProtocol(StartTLSClient)
            )
        elif mode == "endpoints":
            endpoint = wrapClientTLS(
                clientOptions, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            )
            connectProtocol(endpoint, Client()).addErrback(clientDone.errback)
        else:
            reactor.connectSSL(
                "127.0.0.1", port, ClientFactory.forProtocol(Client), clientOptions
            )


    def start():
        if mode == "startTLS-unix":
            connect(
                reactor.listenUNIX(
                    path("tls.sock"), Factory.forProtocol(StartTLSEcho)
                )
            )
        elif mode == "startTLS":
            connect(
                reactor.listenTCP(
                    0, Factory.forProtocol(StartTLSEcho), interface="127.0.0.1"
                )
            )
        elif mode == "endpoints":
            endpoint = SSL4ServerEndpoint(
                reactor, 0, serverOptions, interface="127.0.0.1"
            )
            endpoint.listen(Factory.forProtocol(Echo)).addCallback(connect)
        else:
            contextFactory = ssl.DefaultOpenSSLContextFactory(
                path("key.pem"), path("cert.pem")
            )
            connect(
                reactor.listenSSL(
                    0, Factory.forProtocol(Echo), contextFactory, interface="127.0.0.1"
                )
            )
        gatherResults([clientDone, serverDone], consumeErrors=True).addCallback(
            report
        ).addErrback(failed).addBoth(finish)


    def expire():
        sys.stderr.write(f"TIMEOUT after {timeout}s in {mode}: {progress}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2)


    reactor.callWhenRunning(start)
    reactor.callLater(float(timeout), expire)
    reactor.run()
    sys.exit(exitCode[0])
    """
)


def _selfSigned(commonName: str) -> tuple[bytes, bytes]:
    """
    A self-signed RSA certificate for C{commonName} (also its DNS
    subjectAltName, which hostname verification checks), and its key.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(commonName)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return certPEM, keyPEM


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A directory holding the server's certificate and key, a stranger's
    certificate with the same name but another key, and the payload.
    """
    directory = tmp_path_factory.mktemp("tls")
    certPEM, keyPEM = _selfSigned("localhost")
    strangerPEM, _ = _selfSigned("localhost")
    (directory / "cert.pem").write_bytes(certPEM)
    (directory / "key.pem").write_bytes(keyPEM)
    (directory / "stranger.pem").write_bytes(strangerPEM)
    (directory / "payload.bin").write_bytes(os.urandom(BLOB_SIZE))
    return directory


def _expectedDigest(directory: Path) -> tuple[int, str]:
    """
    The length and SHA-256 of everything the child's client sends, built
    the same way the child builds it.
    """
    blob = (directory / "payload.bin").read_bytes()
    sent = (
        b"".join(b"small %03d\n" % i for i in range(50))
        + blob
        + b"".join(b"tail %03d\n" % i for i in range(50))
    )
    return len(sent), hashlib.sha256(sent).hexdigest()


def _child(reactorName: str, mode: str, directory: Path) -> dict[str, str]:
    """
    Run the child program; return its C{KEY value} lines as a dict, after
    checking it was not cut short.
    """
    environ = dict(os.environ)
    environ.pop("URINGREACTOR_FALLBACK", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            reactorName,
            mode,
            str(directory),
            str(CHILD_TIMEOUT),
        ],
        capture_output=True,
        text=True,
        env=environ,
        cwd=directory,
        timeout=PARENT_TIMEOUT,
    )
    transcript = f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "TIMEOUT" not in result.stderr, transcript
    assert "FAILED" not in result.stdout, transcript
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        lines[key] = value
    lines["exit"] = str(result.returncode)
    lines["transcript"] = transcript
    return lines


@pytest.fixture(params=sorted(REACTOR_CLASSES))
def reactorName(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(
    "mode", ["listenSSL", "endpoints", "startTLS", "startTLS-unix"]
)
def test_tlsEchoWithVerifiedCertificate(
    reactorName: str, mode: str, material: Path
) -> None:
    """
    A mebibyte and a hundred small messages go through a TLS echo server and
    come back byte for byte; the client verified the server's certificate
    (trust root and name) and both sides close cleanly.  With C{startTLS}
    the connection (TCP, or a UNIX socket) starts plain, exchanges lines,
    and both ends upgrade.
    """
    lines = _child(reactorName, mode, material)
    transcript = lines["transcript"]
    total, digest = _expectedDigest(material)
    assert lines["exit"] == "0", transcript
    assert "VERIFIED" in lines, transcript
    assert lines["REACTOR"] == REACTOR_CLASSES[reactorName], transcript
    assert lines["SENT"] == f"{total} {digest}", transcript
    assert lines["CLIENT_RECEIVED"] == f"{total} {digest}", transcript
    assert lines["SERVER_RECEIVED"] == f"{total} {digest}", transcript
    assert lines["PEER_CN"] == "localhost", transcript
    assert lines["SERVER_TLS"] == "True", transcript
    if mode == "startTLS-unix":
        # The server closes as soon as it has the client's close_notify; a
        # UNIX socket closed with unread data resets its peer, so the
        # client's end may see a reset (on epoll exactly as here).
        assert lines["CLIENT_LOST"].startswith(("ConnectionDone", "ConnectionLost")), (
            transcript
        )
    else:
        assert lines["CLIENT_LOST"].startswith("ConnectionDone"), transcript
    assert lines["SERVER_LOST"].startswith("ConnectionDone"), transcript
    expectedPlaintext = "HELLO plain,GO" if mode.startswith("startTLS") else ""
    assert lines["PLAINTEXT"] == expectedPlaintext, transcript
    assert "Traceback" not in transcript, transcript


@pytest.mark.parametrize(
    "mode, why",
    [
        ("stranger", "certificate verify failed"),
        ("wronghost", "wrong.example"),
    ],
)
def test_tlsClientRefusesUnverifiedCertificate(
    reactorName: str, mode: str, why: str, material: Path
) -> None:
    """
    A client that trusts only another certificate, or expects another host
    name, drops the connection during the handshake: nothing it wrote
    reaches the server and nothing comes back.
    """
    lines = _child(reactorName, mode, material)
    transcript = lines["transcript"]
    assert lines["exit"] == "0", transcript
    assert "REFUSED" in lines, transcript
    assert lines["REACTOR"] == REACTOR_CLASSES[reactorName], transcript
    assert lines["CLIENT_RECEIVED"].startswith("0 "), transcript
    assert lines["SERVER_RECEIVED"].startswith("0 "), transcript
    assert why in lines["CLIENT_LOST"], transcript
    # The server sees the client give up, not a clean close.
    assert not lines["SERVER_LOST"].startswith("ConnectionDone"), transcript
    assert "Traceback" not in transcript, transcript
