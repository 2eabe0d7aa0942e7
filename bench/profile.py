"""
Where a server's CPU time goes, by layer, under the load of a benchmark
scenario: the reactor (uringreactor's Python and C, or Twisted's own epoll
reactor), Twisted's transport and base classes, the protocol and the
application (twisted.web, twisted.names, the echo protocol), TLS, and system
calls.

    python bench/profile.py [--reactors iouring,epoll] [--seconds S]
                            [--rate HZ] [--top N] SCENARIO...

SCENARIO is a scenario name of C{bench/compare.py} (or a unique part of
one, such as C{"Connection: close"}).  Each server runs as in compare.py,
pinned to CPU 0 with its load on CPU 1; after the warm-up, py-spy samples
the server's stack (Python and native frames) for the measured window, and
each sample is counted once, in the layer of its innermost frame that names
one: a sample in a C library's system-call wrapper (send, shutdown,
io_uring_enter, epoll_wait, ...) counts as a system call, whatever called
it; otherwise the innermost Python frame's module decides.  The server's
user and system CPU time over the same window are read from /proc as a
cross-check (system time includes the kernel work done inside
io_uring_enter and epoll_wait).

py-spy is not a dependency of the project: C{pip install py-spy} into the
virtualenv first.  Sampling runs at 100 Hz by default, a few per cent of the
server's time; the load's numbers are printed but are not the benchmark's.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare  # noqa: E402

SYSTEM_CALLS = frozenset(
    """
    accept accept4 close connect epoll_ctl epoll_wait epoll_pwait fcntl fstat
    getpeername getsockname getsockopt ioctl open openat pipe2 poll read readv
    recv recvfrom recvmsg recvmmsg send sendmsg sendmmsg sendto setsockopt
    shutdown socket stat statx write writev __libc_recv __libc_send
    __libc_read __libc_write __libc_close __libc_accept syscall waitpid
    wait4 clone clone3 execve _Fork fork posix_spawn lseek newfstatat
    _io_uring_get_cqe __io_uring_get_cqe io_uring_submit
    io_uring_submit_and_wait __io_uring_submit __sys_io_uring_enter
    __sys_io_uring_enter2 io_uring_enter
    """.split()
)

LAYERS = (
    "system calls",
    "reactor: uringreactor",
    "reactor: Twisted (epoll, tcp, abstract, base)",
    "TLS (twisted.protocols.tls, pyOpenSSL, OpenSSL)",
    "protocol and application",
    "Twisted support (logging, failure, components)",
    "Python runtime and standard library",
)


def layerOf(frame: str) -> str | None:
    """
    The layer a frame belongs to, or C{None} if it names none (an
    interpreter-internal native frame, which counts for the Python frame
    that runs it).

    @param frame: one py-spy frame, C{"function (file:line)"}.
    """
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    if "libc.so" in where:
        return "system calls" if name in SYSTEM_CALLS else None
    if "_liburing" in where or where.startswith(("ring.c", "ops.c", "datagrams.c")):
        if name in SYSTEM_CALLS:
            return "system calls"
        return "reactor: uringreactor"
    if "libssl" in where or "libcrypto" in where or "_rust.abi3" in where:
        return LAYERS[3]
    if not (".py" in where or where.startswith("<")):
        # libpython, the allocator, _cffi_backend: count for the Python
        # frame that called them.
        return None
    path = where.split(":")[0]
    if "uringreactor/" in path:
        return LAYERS[1]
    if "twisted/protocols/tls" in path or "OpenSSL/" in path or "cryptography/" in path:
        return LAYERS[3]
    if "twisted/internet/" in path:
        return LAYERS[2]
    if "twisted.internet.address" in where:
        # attrs-generated methods of Twisted's address classes.
        return LAYERS[2]
    if (
        "twisted/web/" in path
        or "twisted/names/" in path
        or "twisted/protocols/" in path
        or "bench/" in path
    ):
        return LAYERS[4]
    if "twisted/" in path or "zope/" in path:
        return LAYERS[5]
    return LAYERS[6]


def classify(stack: str) -> tuple[str, str]:
    """
    The layer of one sampled stack (frames outermost first, C{;}-separated),
    and the frame that decided it.
    """
    for frame in reversed(stack.split(";")):
        layer = layerOf(frame)
        if layer is not None:
            return layer, frame
    return LAYERS[6], ""


def readRaw(
    path: Path,
) -> tuple[collections.Counter[str], collections.Counter[tuple[str, str]]]:
    """
    Samples per layer, and per (layer, function), from py-spy's raw
    (collapsed-stack) output.
    """
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            layer, frame = classify(stack)
            layers[layer] += int(count)
            # The function, without the line: "Sender.flush (uringreactor/...)".
            functions[layer, frame.rsplit(":", 1)[0] + ")"] += int(count)
    return layers, functions


def _cpuTimes(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def profile(
    pyspy: str,
    tools: dict[str, Path],
    reactor: str,
    scenario: compare.Scenario,
    warmup: float,
    seconds: float,
    rate: int,
) -> dict[str, Any]:
    """
    Run one scenario against one reactor's server with py-spy attached for
    the measured window.
    """
    if scenario.variant in ("churn", "close"):
        compare.waitForConntrackRoom(warmup + seconds)
    server, port = compare._startServer(reactor, compare.serverArguments(scenario))
    out = Path(tempfile.mkdtemp()) / "raw.txt"
    sampled: dict[str, Any] = {}
    # py-spy takes whole seconds; sample inside the measured run.
    window = max(int(seconds - 0.5), 1)

    def sample() -> None:
        # The web and DNS loads run a warm-up of their own first (at least a
        # second); start sampling once the measured run has begun.
        time.sleep(max(warmup, 1) + 0.25)
        u0, s0 = _cpuTimes(server.pid)
        done = subprocess.run(
            [pyspy, "record", "--pid", str(server.pid), "--native", "--format"]
            + ["raw", "-r", str(rate), "-d", str(window), "-o", str(out)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sampled["error"] = done.stderr.strip()
        u1, s1 = _cpuTimes(server.pid)
        sampled.update(user=u1 - u0, system=s1 - s0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        if scenario.kind == "web":
            data = compare._wrk(port, scenario, warmup, seconds, server.pid)
        elif scenario.kind == "dns":
            data = compare._dnsperf(port, scenario, warmup, seconds, server.pid)
        else:
            data = compare._loadgen(tools, port, scenario, warmup, seconds, server.pid)
    finally:
        sampler.join()
        compare._stopServer(server)
    if out.exists():
        layers, functions = readRaw(out)
    else:
        layers, functions = collections.Counter(), collections.Counter()
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"rps": data["rps"], "layers": layers, "functions": functions, **sampled}


def report(
    reactor: str, scenario: compare.Scenario, result: dict[str, Any], top: int
) -> str:
    layers = result["layers"]
    if "error" in result:
        return f"{scenario.name}, {reactor}: py-spy failed: {result['error']}"
    total = sum(layers.values())
    cpu = result.get("user", 0) + result.get("system", 0)
    lines = [
        f"{scenario.name}, {reactor}: {result['rps']:,.0f}/s under sampling, "
        f"{total} samples; CPU user {result.get('user', 0):.2f} s, system "
        f"{result.get('system', 0):.2f} s "
        f"({100 * result.get('system', 0) / (cpu or 1):.0f}% system)"
    ]
    for layer in LAYERS:
        if layers[layer]:
            lines.append(f"    {100 * layers[layer] / (total or 1):5.1f}%  {layer}")
            ranked = [
                (n, f)
                for (lay, f), n in result["functions"].most_common()
                if lay == layer
            ]
            for n, function in ranked[:top]:
                lines.append(f"             {100 * n / (total or 1):5.1f}%  {function}")
    return "\n".join(lines)


def pick(names: list[str]) -> list[compare.Scenario]:
    chosen = []
    for name in names:
        matches = [s for s in compare.FULL if name in s.name]
        exact = [s for s in matches if s.name == name]
        if exact:
            matches = exact
        if len(matches) != 1:
            raise SystemExit(
                f"{name!r} matches {len(matches)} scenarios; known: "
                + "; ".join(s.name for s in compare.FULL)
            )
        if matches[0].kind in ("process", "idle"):
            raise SystemExit(f"{matches[0].name}: no server to profile")
        chosen.append(matches[0])
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+")
    parser.add_argument("--reactors", default="iouring,epoll")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument(
        "--top", type=int, default=0, help="also the N busiest functions per layer"
    )
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(pyspy):
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    scenarios = pick(args.scenarios)
    tools = compare.buildNative(scenarios)
    for scenario in scenarios:
        for reactor in args.reactors.split(","):
            result = profile(
                pyspy, tools, reactor, scenario, args.warmup, args.seconds, args.rate
            )
            print(report(reactor, scenario, result, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
