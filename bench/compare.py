"""
Side-by-side benchmark: the io_uring reactor against the epoll reactor (and
others), in one session, rounds interleaved.

    python bench/compare.py [--quick] [--reactors iouring,epoll,...]
                            [--rounds N] [--seconds S] [--save [--label L]]
                            [--baseline PATH] [--python NAME=PATH]

Each measurement starts a fresh server (bench/server.py) pinned to CPU 0 and
a load generator pinned to CPU 1: for echo scenarios (TCP, UNIX, TLS, a
connection per request) the native bench/loadgen.c, which verifies every
echoed byte and reads the server's CPU time over exactly its measurement
window; for UDP echo bench/udpload.c, which does the same per datagram; for
twisted.web (plain, Connection: close, TLS, static files), wrk; for
twisted.names, dnsperf.  The process scenarios (bench/processes.py: a
child's 256 MiB stdout, short-lived children) are their own load.  Rounds
interleave the servers (A B C A B C ...) so drift in the machine's speed hits
all of them alike; the table shows medians, the spread (min-max of
requests/s), server CPU per request, latency percentiles, the load
generator's own CPU use, and ratios to epoll.  The idle scenario holds
10,000 connections and reports the server's resident memory per connection.

Without --save the results go to build/bench/; with it, to bench/results/
as JSON, a text table and a PNG chart named after the date and kernel.

C{--baseline PATH} also measures the io_uring reactor of another checkout
(its extensions built in place: C{python setup.py build_ext --inplace}
there), as C{iouring-baseline}, interleaved with the rest: a change is
compared with what it changes in one run.

C{--python NAME=PATH} (repeatable) also runs every reactor's server under
the interpreter PATH (a virtualenv's python with uringreactor installed),
as C{REACTOR@NAME} (C{iouring@pypy}, C{epoll@pypy}), interleaved with the
rest; their ratios are to C{epoll@NAME}, so each interpreter's io_uring
reactor is compared with its own epoll reactor in the same run.
bench/run --python INTERPRETER makes that virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = ROOT / "build"


@dataclass(frozen=True)
class Scenario:
    """
    One workload.

    @ivar kind: C{echo} (bench/loadgen.c against the echo app), C{idle}
        (memory held by idle connections), C{web} (wrk against twisted.web),
        C{udp} (bench/udpload.c against a datagram echo), C{dns} (dnsperf
        against twisted.names) or C{process} (bench/processes.py, which is
        its own load).
    @ivar variant: for C{echo}, C{unix}, C{tls} or C{churn} (a connection
        per request); for C{web}, C{close} (C{Connection: close}), C{tls}
        or C{static} (twisted.web's C{File}); for C{process}, C{pipe} or
        C{spawn}; empty for plain TCP.
    @ivar path: the URL path for C{web}.
    @ivar unit: what a "request" is, for the table.
    """

    name: str
    connections: int
    size: int
    depth: int
    kind: str = "echo"
    variant: str = ""
    path: str = "/"
    unit: str = "req"


QUICK = [
    Scenario("64 conns, 64 B", 64, 64, 1),
    Scenario("1000 conns, 64 B", 1000, 64, 1),
]

FULL = [
    Scenario("1 conn, 64 B (latency)", 1, 64, 1),
    Scenario("64 conns, 64 B", 64, 64, 1),
    Scenario("1000 conns, 64 B", 1000, 64, 1),
    Scenario("10000 conns, 64 B", 10000, 64, 1),
    Scenario("64 conns, 4 KiB x4 pipelined", 64, 4096, 4),
    Scenario("16 conns, 64 KiB", 16, 65536, 1),
    Scenario("UNIX 64 conns, 64 B", 64, 64, 1, variant="unix"),
    Scenario("TLS 64 conns, 64 B", 64, 64, 1, variant="tls"),
    Scenario("TLS 16 conns, 64 KiB", 16, 65536, 1, variant="tls"),
    Scenario(
        "churn: conn per 64 B echo, 16 at once", 16, 64, 1, variant="churn", unit="conn"
    ),
    Scenario("UDP 64 B, 64 in flight", 64, 64, 1, "udp", unit="dgram"),
    Scenario("UDP 1400 B, 64 in flight", 64, 1400, 1, "udp", unit="dgram"),
    Scenario("twisted.names UDP, dnsperf 64", 64, 0, 1, "dns", unit="query"),
    Scenario("twisted.web, wrk 64 conns", 64, 0, 1, "web"),
    Scenario("twisted.web Connection: close", 16, 0, 1, "web", "close"),
    Scenario("twisted.web TLS, wrk 64 conns", 64, 0, 1, "web", "tls"),
    Scenario("static 64 KiB file, wrk 16", 16, 0, 1, "web", "static", "/64k"),
    Scenario("static 1 MiB file, wrk 16", 16, 0, 1, "web", "static", "/1m"),
    Scenario("child stdout 256 MiB", 1, 0, 1, "process", "pipe", unit="MiB"),
    Scenario("spawn /bin/true, 8 at once", 8, 0, 1, "process", "spawn", unit="spawn"),
    Scenario("10000 idle conns (memory)", 10000, 64, 0, "idle"),
]

# What each kind of scenario needs beyond the compiler.
_TOOLS = {"web": "wrk", "dns": "dnsperf"}

# dnsperf's queries: names of the dns app's zone (bench/server.py).
DNS_QUERIES = (
    "bench.example A\nwww.bench.example A\nbench.example NS\nbench.example SOA\n"
)

# The native reference: an epoll echo server in C (bench/echo_server.c).
NATIVE = "c-epoll"

FULL_REACTORS = "iouring,iouring-nospin,epoll,poll,uvloop,uvloop-plain," + NATIVE


def available(reactor: str) -> bool:
    """
    Whether the packages a reactor needs are installed.
    """
    reactor, suffix = splitReactor(reactor)
    if suffix and reactor == NATIVE:
        return False
    if reactor.startswith("uvloop"):
        if suffix:
            found = subprocess.run([_interpreters[suffix[1:]], "-c", "import uvloop"])
            return found.returncode == 0
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return False
    return True


def _buildNative(
    name: str, source: str | None = None, flags: tuple[str, ...] = ()
) -> Path:
    """
    Compile C{bench/SOURCE.c} (C{NAME.c} by default) into C{build/NAME} if
    that is missing or older than it.
    """
    path = HERE / f"{source or name}.c"
    binary = BUILD / name
    if not binary.exists() or binary.stat().st_mtime < path.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", str(binary), str(path), *flags], check=True
        )
    return binary


def buildNative(scenarios: list[Scenario]) -> dict[str, Path]:
    """
    Compile the load generators the scenarios use and the native reference
    server.
    """
    tools = {
        "echo_server": _buildNative("echo_server"),
        "loadgen": _buildNative("loadgen"),
    }
    kinds = {(sc.kind, sc.variant) for sc in scenarios}
    if ("udp", "") in kinds:
        tools["udpload"] = _buildNative("udpload")
    if ("echo", "tls") in kinds:
        tools["loadgen-tls"] = _buildNative(
            "loadgen-tls", "loadgen", ("-DLOADGEN_TLS", "-lssl", "-lcrypto")
        )
    return tools


def echoOnly(reactor: str) -> bool:
    """
    Whether a server serves only the TCP echo app: the references without
    Twisted.
    """
    reactor = splitReactor(reactor)[0]
    return reactor.endswith("-plain") or reactor == NATIVE


def serves(reactor: str, scenario: Scenario) -> bool:
    """
    Whether a reactor's server runs a scenario: the references without
    Twisted only run TCP echo and idle connections.
    """
    if echoOnly(reactor):
        return scenario.kind in ("echo", "idle") and not scenario.variant
    return True


def serverArguments(scenario: Scenario) -> list[str]:
    """
    bench/server.py's arguments for a scenario's app.
    """
    if scenario.kind in ("udp", "dns"):
        return ["--app", scenario.kind]
    if scenario.kind == "web":
        app = "static" if scenario.variant == "static" else "web"
        return ["--app", app] + (["--tls"] if scenario.variant == "tls" else [])
    extra = {"tls": ["--tls"], "unix": ["--unix", str(UNIX_PATH)]}
    return ["--app", "echo"] + extra.get(scenario.variant, [])


# Where the UNIX echo scenario's server listens.
UNIX_PATH = BUILD / "bench-echo.sock"


def _pin(cpu: int) -> Any:
    def preexec() -> None:
        cpus = os.cpu_count()
        if hasattr(os, "sched_setaffinity") and cpus and cpus > cpu:
            os.sched_setaffinity(0, {cpu})

    return preexec


# The checkout whose io_uring reactor runs as BASELINE (--baseline).
BASELINE = "iouring-baseline"
_baselinePath: str | None = None
# Other interpreters (--python NAME=PATH): reactor names with "@NAME" run
# their server under PATH.
_interpreters: dict[str, str] = {}


def splitReactor(reactor: str) -> tuple[str, str]:
    """
    C{"epoll@pypy"} -> C{("epoll", "@pypy")}; C{"epoll"} -> C{("epoll", "")}.
    """
    name, at, interpreter = reactor.partition("@")
    return name, at + interpreter


def referenceFor(reactor: str) -> str:
    """
    What a reactor's ratios are computed against: the epoll reactor under
    the same interpreter.
    """
    return "epoll" + splitReactor(reactor)[1]


def _python(reactor: str) -> tuple[str, str, dict[str, str] | None]:
    """
    The reactor's name for bench/server.py, the interpreter to run it, and
    its environment (None: this one's).
    """
    reactor, suffix = splitReactor(reactor)
    python = _interpreters[suffix[1:]] if suffix else sys.executable
    if reactor == BASELINE:
        assert _baselinePath is not None
        return "iouring", python, dict(os.environ, PYTHONPATH=_baselinePath)
    return reactor, python, None


def _startServer(
    reactor: str, arguments: list[str]
) -> tuple[subprocess.Popen[str], int]:
    if splitReactor(reactor)[0] == NATIVE:
        command, env = [str(BUILD / "echo_server")], None
    else:
        name, python, env = _python(reactor)
        command = [python, str(HERE / "server.py"), name, *arguments]
        if "--unix" in arguments:
            UNIX_PATH.unlink(missing_ok=True)
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(0),
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("PORT"):
        err = server.stderr.read() if server.stderr else ""
        server.kill()
        raise RuntimeError(f"{reactor} server did not start: {line}{err}")
    return server, int(line.split()[1])


def _stopServer(server: subprocess.Popen[str]) -> dict[str, Any] | None:
    server.terminate()
    try:
        out, _ = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        out, _ = server.communicate()
    counters = None
    for line in out.splitlines():
        if line.startswith("{"):
            counters = json.loads(line).get("counters")
    return counters


def _cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    port: int, scenario: Scenario, warmup: float, seconds: float, pid: int
) -> dict[str, Any]:
    """
    twisted.web under wrk: a warm-up run, then the measured run, with the
    server's CPU time read around it.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    scheme = "https" if scenario.variant == "tls" else "http"
    url = f"{scheme}://127.0.0.1:{port}{scenario.path}"
    base = [wrk, "-t1", f"-c{scenario.connections}", "--latency"]
    if scenario.variant == "close":
        base += ["-H", "Connection: close"]
    subprocess.run(
        base + [f"-d{max(warmup, 1):g}s", url], capture_output=True, preexec_fn=_pin(1)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = _cpuSeconds(pid)
    result = subprocess.run(
        base + [f"-d{seconds:g}s", url],
        capture_output=True,
        text=True,
        preexec_fn=_pin(1),
    )
    cpu1 = _cpuSeconds(pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if m:
        errors += sum(int(g) for g in m.groups())

    def percentile(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value = float(m.group(1))
        return value * {"us": 1, "ms": 1000, "s": 1e6}[m.group(2)]

    lgCpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "connections": scenario.connections,
        "seconds": seconds,
        "requests": total,
        "rps": rps,
        "p50_us": percentile("50"),
        "p99_us": percentile("99"),
        "errors": errors,
        "verify_failures": 0,
        "server_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_s": lgCpu,
    }


def _dnsperf(
    port: int, scenario: Scenario, warmup: float, seconds: float, pid: int
) -> dict[str, Any]:
    """
    twisted.names under dnsperf (SCENARIO.connections queries in flight
    from 8 sockets), with the server's CPU time read around the measured
    run.
    """
    dnsperf = shutil.which("dnsperf")
    if dnsperf is None:
        raise RuntimeError("dnsperf is not installed (apt-get install dnsperf)")
    queries = BUILD / "dns-queries.txt"
    BUILD.mkdir(exist_ok=True)
    queries.write_text(DNS_QUERIES)
    base = [dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
    base += ["-q", str(scenario.connections), "-c", "8", "-T", "1", "-t", "1"]
    subprocess.run(
        base + ["-l", f"{max(warmup, 1):g}"], capture_output=True, preexec_fn=_pin(1)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = _cpuSeconds(pid)
    result = subprocess.run(
        base + ["-l", f"{seconds:g}"],
        capture_output=True,
        text=True,
        preexec_fn=_pin(1),
    )
    cpu1 = _cpuSeconds(pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = result.stdout

    def field(pattern: str) -> float:
        m = re.search(pattern, out)
        if m is None:
            raise RuntimeError(f"dnsperf printed no {pattern!r}: {out}{result.stderr}")
        return float(m.group(1))

    completed = int(field(r"Queries completed:\s+(\d+)"))
    noerror = re.search(r"NOERROR (\d+)", out)
    elapsed = field(r"Run time \(s\):\s+([\d.]+)")
    return {
        "connections": scenario.connections,
        "seconds": elapsed,
        "requests": completed,
        "rps": field(r"Queries per second:\s+([\d.]+)"),
        "p50_us": float("nan"),
        "p99_us": float("nan"),
        "mean_us": field(r"Average Latency \(s\):\s+([\d.]+)") * 1e6,
        "lost": int(field(r"Queries lost:\s+(\d+)")),
        # An answer other than NOERROR is a wrong answer.
        "errors": completed - (int(noerror.group(1)) if noerror else 0),
        "verify_failures": 0,
        "server_cpu_s": cpu1 - cpu0,
        "loadgen_cpu_s": (after.ru_utime - before.ru_utime)
        + (after.ru_stime - before.ru_stime),
    }


def _process(
    reactor: str, scenario: Scenario, warmup: float, seconds: float
) -> dict[str, Any]:
    """
    A process scenario: bench/processes.py is its own load, pinned to the
    server's CPU.
    """
    name, python, env = _python(reactor)
    command = [python, str(HERE / "processes.py"), name, scenario.variant]
    return _runTool(command + [f"{warmup:g}", f"{seconds:g}"], 0, warmup + seconds, env)


def _runTool(
    command: list[str], cpu: int, seconds: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """
    Run a measuring program pinned to C{cpu}; return the JSON object it
    prints last.
    """
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_pin(cpu),
        timeout=seconds + 120,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(
            f"{' '.join(command[:3])} failed ({result.returncode}): "
            f"{result.stdout}{result.stderr}"
        )
    return dict(json.loads(result.stdout.splitlines()[-1]))


def _loadgen(
    tools: dict[str, Path],
    port: int,
    scenario: Scenario,
    warmup: float,
    seconds: float,
    pid: int,
) -> dict[str, Any]:
    """
    An echo, idle or UDP scenario under the native load generators.
    """
    window = str(min(seconds, 2) if scenario.kind == "idle" else seconds)
    if scenario.kind == "udp":
        command = [str(tools["udpload"]), "127.0.0.1", str(port), "8"]
        command += [str(scenario.connections), str(scenario.size)]
    else:
        host = f"unix:{UNIX_PATH}" if scenario.variant == "unix" else "127.0.0.1"
        binary = tools["loadgen-tls" if scenario.variant == "tls" else "loadgen"]
        command = [str(binary), host, str(port), str(scenario.connections)]
        command += [str(scenario.size), str(scenario.depth)]
    command += [str(warmup), window, str(pid)]
    if scenario.variant in ("tls", "churn"):
        command.append(scenario.variant)
    return _runTool(command, 1, warmup + seconds)


# The kernel's connection-tracking table, where a firewall has loaded it
# (podman's and docker's rules do).
CONNTRACK = Path("/proc/sys/net/netfilter")
# Connections a second of a connection-per-request load may open, at most.
_CONNECTIONS_PER_SECOND = 15000


def waitForConntrackRoom(seconds: float, limit: float = 180.0) -> float:
    """
    Before a load that opens a connection per request for C{seconds}: wait
    until the connection-tracking table, if the kernel has one, has room for
    every connection it may open.  Each connection keeps an entry for two
    minutes after it closes (C{nf_conntrack_tcp_timeout_time_wait}), and a
    full table drops new connections' packets: their connects retry a second
    later and the rate collapses, whichever the reactor, in whichever rounds
    come once the earlier ones have filled it.

    @return: how long it waited, in seconds.
    """
    countFile = CONNTRACK / "nf_conntrack_count"
    try:
        maximum = int((CONNTRACK / "nf_conntrack_max").read_text())
        count = int(countFile.read_text())
    except (OSError, ValueError):
        return 0.0
    needed = int(seconds * _CONNECTIONS_PER_SECOND)
    started = time.monotonic()
    if count + needed > maximum:
        print(
            f"  waiting for room in the connection-tracking table "
            f"({count:,} of {maximum:,} entries, {needed:,} wanted)",
            flush=True,
        )
    while count + needed > maximum:
        if time.monotonic() - started > limit:
            raise RuntimeError(
                f"the connection-tracking table stayed full ({count:,} of "
                f"{maximum:,} entries) for {limit:g} s: raise "
                f"net.netfilter.nf_conntrack_max, or run where nf_conntrack "
                f"is not loaded"
            )
        time.sleep(1)
        count = int(countFile.read_text())
    return time.monotonic() - started


def measure(
    tools: dict[str, Path],
    reactor: str,
    scenario: Scenario,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    """
    One measurement: a fresh server, one load generator run.
    """
    if scenario.kind == "process":
        data = _process(reactor, scenario, warmup, seconds)
        counters = data.pop("counters", None)
    else:
        if scenario.variant in ("churn", "close"):
            waitForConntrackRoom(warmup + seconds)
        server, port = _startServer(reactor, serverArguments(scenario))
        try:
            if scenario.kind == "web":
                data = _wrk(port, scenario, warmup, seconds, server.pid)
            elif scenario.kind == "dns":
                data = _dnsperf(port, scenario, warmup, seconds, server.pid)
            else:
                data = _loadgen(tools, port, scenario, warmup, seconds, server.pid)
        except RuntimeError as e:
            raise RuntimeError(f"{reactor}, {scenario.name}: {e}") from None
        finally:
            counters = _stopServer(server)
    data["counters"] = counters
    data["reactor"] = reactor
    data["scenario"] = scenario.name
    if scenario.kind == "idle":
        return data
    requests = data["requests"]
    data["server_us_per_req"] = (
        data["server_cpu_s"] / requests * 1e6 if requests else float("nan")
    )
    if counters and data.get("total_requests"):
        total = data["total_requests"]
        data["enters_per_req"] = counters["enters"] / total
        data["sqes_per_req"] = counters["sqes"] / total
        data["cqes_per_enter"] = counters["cqes"] / max(counters["enters"], 1)
    return data


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if runs[0].get("idle"):
        per = [r["bytes_per_connection"] for r in runs]
        return {
            "idle": True,
            "bytes_per_connection": statistics.median(per),
            "bytes_min": min(per),
            "bytes_max": max(per),
            "errors": sum(r["errors"] + r["verify_failures"] for r in runs),
        }
    rps = [r["rps"] for r in runs]
    enters = [r["enters_per_req"] for r in runs if r.get("enters_per_req") is not None]
    return {
        "rps": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "us_per_req": statistics.median(r["server_us_per_req"] for r in runs),
        "p50_us": statistics.median(r["p50_us"] for r in runs),
        "p99_us": statistics.median(r["p99_us"] for r in runs),
        "loadgen_cpu": statistics.median(
            r["loadgen_cpu_s"] / r["seconds"] for r in runs
        ),
        "errors": sum(r["errors"] + r["verify_failures"] for r in runs),
        "enters_per_req": statistics.median(enters) if enters else None,
    }


def table(
    scenarios: list[Scenario], reactors: list[str], summary: dict[Any, Any]
) -> str:
    header = (
        f"{'scenario (rate, CPU per unit)':44s} {'reactor':20s} {'rate/s':>9s} "
        f"{'spread':>15s} "
        f"{'us/unit':>7s} {'p50us':>7s} {'p99us':>7s} {'x epoll':>8s} "
        f"{'cpu x':>6s} {'lg cpu':>6s} {'enters/req':>10s}"
    )
    lines = [header, "-" * len(header)]
    for sc in scenarios:
        label = sc.name if sc.unit == "req" else f"{sc.name} ({sc.unit})"
        for reactor in reactors:
            s = summary.get((sc.name, reactor))
            if s is None:
                continue
            base = summary.get((sc.name, referenceFor(reactor)))
            flag = "" if s["errors"] == 0 else "  ERRORS!"
            if s.get("idle"):
                ratio = (
                    s["bytes_per_connection"] / base["bytes_per_connection"]
                    if base
                    else float("nan")
                )
                lines.append(
                    f"{label:44s} {reactor:20s} {s['bytes_per_connection']:9.0f} "
                    f"{'bytes/conn':>15s} {'':>7s} {'':>7s} {'':>7s} "
                    f"{ratio:7.2f}x{flag}"
                )
                continue
            ratio = s["rps"] / base["rps"] if base else float("nan")
            cpuRatio = s["us_per_req"] / base["us_per_req"] if base else float("nan")
            spread = f"{s['rps_min'] / 1000:.1f}k-{s['rps_max'] / 1000:.1f}k"
            enters = (
                f"{s['enters_per_req']:.3f}" if s["enters_per_req"] is not None else "-"
            )
            lines.append(
                f"{label:44s} {reactor:20s} {s['rps']:9.0f} {spread:>15s} "
                f"{s['us_per_req']:7.2f} {s['p50_us']:7.0f} {s['p99_us']:7.0f} "
                f"{ratio:7.2f}x {cpuRatio:5.2f}x {s['loadgen_cpu'] * 100:5.0f}% "
                f"{enters:>10s}{flag}"
            )
        lines.append("")
    return "\n".join(lines)


def chart(
    scenarios: list[Scenario],
    reactors: list[str],
    summary: dict[Any, Any],
    path: Path,
    title: str,
) -> bool:
    """
    Requests/s relative to epoll and server CPU per request, by scenario,
    one bar per reactor.  Returns False when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    loaded = [sc for sc in scenarios if sc.kind != "idle"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    width = 0.8 / max(len(reactors), 1)
    for i, reactor in enumerate(reactors):
        ratios, cpus = [], []
        for sc in loaded:
            s = summary.get((sc.name, reactor))
            base = summary.get((sc.name, referenceFor(reactor)))
            ratios.append(s["rps"] / base["rps"] if s and base else 0)
            cpus.append(s["us_per_req"] if s else 0)
        xs = [x + i * width for x in range(len(loaded))]
        axes[0].bar(xs, ratios, width, label=reactor)
        axes[1].bar(xs, cpus, width, label=reactor)
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel("requests/s relative to epoll (same interpreter)")
    axes[1].set_ylabel("server CPU per request (us)")
    axes[1].set_xticks(
        [x + width * (len(reactors) - 1) / 2 for x in range(len(loaded))]
    )
    axes[1].set_xticklabels([sc.name for sc in loaded], rotation=20, ha="right")
    axes[0].legend(ncol=len(reactors))
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def machine() -> dict[str, Any]:
    import twisted

    info: dict[str, Any] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for name, path in _interpreters.items():
        described = subprocess.run(
            [
                path,
                "-c",
                "import platform, twisted; print(platform.python_implementation(),"
                " platform.python_version(), 'Twisted', twisted.__version__)",
            ],
            capture_output=True,
            text=True,
        )
        info[f"python@{name}"] = described.stdout.strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short comparison")
    parser.add_argument("--reactors", default=None)
    parser.add_argument(
        "--scenarios", default=None, help="scenario names, separated by semicolons"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--save", action="store_true", help="write to bench/results/")
    parser.add_argument(
        "--label", default="", help="added to the names of the files --save writes"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="another checkout whose io_uring reactor to measure too",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run every reactor's server under this interpreter",
    )
    args = parser.parse_args()
    default = "iouring,epoll" if args.quick else FULL_REACTORS
    reactors = [r.strip() for r in (args.reactors or default).split(",") if r.strip()]
    for spec in args.python:
        name, _, path = spec.partition("=")
        if not name or not path:
            parser.error(f"--python wants NAME=PATH, not {spec!r}")
        _interpreters[name] = path
    if args.baseline:
        global _baselinePath
        _baselinePath = str(Path(args.baseline).resolve())
        if BASELINE not in reactors:
            reactors.insert(
                reactors.index("iouring") + 1 if "iouring" in reactors else 0, BASELINE
            )
    if _interpreters:
        # Each reactor (the baseline's too) under each interpreter.
        plain = [r for r in reactors if "@" not in r]
        reactors = plain + [f"{r}@{n}" for n in _interpreters for r in plain]
    missing = [r for r in reactors if not available(r)]
    if missing:
        print(f"skipping {', '.join(missing)}: not installed")
        reactors = [r for r in reactors if r not in missing]
    scenarios = QUICK if args.quick else FULL
    if args.scenarios:
        wanted = {w.strip() for w in args.scenarios.split(";")}
        scenarios = [s for s in scenarios if s.name in wanted]
    for sc in scenarios:
        tool = _TOOLS.get(sc.kind)
        if tool and shutil.which(tool) is None:
            print(f"{tool} is not installed: apt-get install {tool}")
            return 2
    tools = buildNative(scenarios)
    info = machine()
    print(
        f"benchmark: {', '.join(reactors)}; {args.rounds} rounds of "
        f"{args.seconds:g}s (+{args.warmup:g}s warm-up); server on CPU 0, "
        f"load generator on CPU 1; kernel {info['kernel']}, Python "
        f"{info['python']}, Twisted {info['twisted']}",
        flush=True,
    )
    for name in _interpreters:
        print(f"  @{name}: {info[f'python@{name}']}", flush=True)
    runs: dict[Any, list[dict[str, Any]]] = {}
    for sc in scenarios:
        for rnd in range(args.rounds):
            for reactor in reactors:
                if not serves(reactor, sc):
                    continue
                r = measure(tools, reactor, sc, args.warmup, args.seconds)
                runs.setdefault((sc.name, reactor), []).append(r)
                if sc.kind == "idle":
                    detail = f"{r['bytes_per_connection']:9.0f} bytes/conn"
                else:
                    detail = (
                        f"{r['rps']:9.0f} {sc.unit}/s "
                        f"{r['server_us_per_req']:6.2f} us/{sc.unit}"
                    )
                print(
                    f"  {sc.name:40s} round {rnd + 1} {reactor:20s} {detail}",
                    flush=True,
                )
    summary = {key: summarize(value) for key, value in runs.items()}
    text = table(scenarios, reactors, summary)
    print()
    print(text)
    if args.save:
        stem = time.strftime("%Y-%m-%d-%H%M") + "-" + info["kernel"]
        if args.label:
            stem += "-" + args.label
        outDir = HERE / "results"
    else:
        stem = "latest"
        outDir = BUILD / "bench"
    outDir.mkdir(parents=True, exist_ok=True)
    title = (
        f"uringreactor vs epoll: kernel {info['kernel']}, Python {info['python']}, "
        f"Twisted {info['twisted']}, {info.get('cpu', '?')}"
    )
    (outDir / f"{stem}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "command": " ".join(sys.argv),
                "scenarios": [asdict(s) for s in scenarios],
                "summary": [
                    {"scenario": k[0], "reactor": k[1], **v} for k, v in summary.items()
                ],
                "runs": [r for rs in runs.values() for r in rs],
            },
            indent=1,
        )
    )
    method = (
        f"Medians of {args.rounds} interleaved rounds of {args.seconds:g} s "
        f"(+{args.warmup:g} s warm-up); server on CPU 0, load generator on CPU 1."
    )
    for name in _interpreters:
        method += f"\n@{name}: {info[f'python@{name}']}"
    (outDir / f"{stem}.txt").write_text(title + "\n" + method + "\n\n" + text + "\n")
    drew = chart(scenarios, reactors, summary, outDir / f"{stem}.png", title)
    print(f"results: {outDir / stem}.json, .txt" + (", .png" if drew else ""))
    failed = any(s["errors"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
