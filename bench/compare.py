"""
Side-by-side echo benchmark: the io_uring reactor against the epoll reactor
(and optionally others), in one session, rounds interleaved.

    python bench/compare.py [--quick] [--reactors iouring,epoll,...]
                            [--rounds N] [--seconds S] [--json PATH]

Each measurement starts a fresh echo server (bench/echo_server.py) pinned to
CPU 0 and the native load generator (bench/loadgen.c) pinned to CPU 1.  The
load generator verifies every echoed byte, and reads the server's CPU time
over exactly its measurement window.  Rounds interleave the servers (A B A
B ...) so drift in the machine's speed hits all of them alike; the table
shows medians, the spread (min-max of requests/s), server CPU per request,
latency percentiles, and ratios to epoll.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    name: str
    connections: int
    size: int
    depth: int


QUICK = [
    Scenario("64 conns, 64 B", 64, 64, 1),
    Scenario("1000 conns, 64 B", 1000, 64, 1),
]

FULL = [
    Scenario("1 conn, 64 B (latency)", 1, 64, 1),
    Scenario("64 conns, 64 B", 64, 64, 1),
    Scenario("1000 conns, 64 B", 1000, 64, 1),
    Scenario("64 conns, 4 KiB x4 pipelined", 64, 4096, 4),
    Scenario("16 conns, 64 KiB", 16, 65536, 1),
    Scenario("10000 conns, 64 B", 10000, 64, 1),
]


def buildLoadgen() -> Path:
    """
    Compile the load generator if it is missing or older than its source.
    """
    source = HERE / "loadgen.c"
    binary = BUILD / "loadgen"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True
        )
    return binary


def _pin(cpu: int) -> Any:
    def preexec() -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:
            os.sched_setaffinity(0, {cpu})

    return preexec


def measure(
    loadgen: Path, reactor: str, scenario: Scenario, warmup: float, seconds: float
) -> dict[str, Any]:
    """
    One measurement: a fresh server, one load generator run.
    """
    server = subprocess.Popen(
        [sys.executable, str(HERE / "echo_server.py"), reactor],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(0),
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT"):
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"{reactor} server did not start: {line}{err}")
        port = int(line.split()[1])
        result = subprocess.run(
            [
                str(loadgen),
                "127.0.0.1",
                str(port),
                str(scenario.connections),
                str(scenario.size),
                str(scenario.depth),
                str(warmup),
                str(seconds),
                str(server.pid),
            ],
            capture_output=True,
            text=True,
            preexec_fn=_pin(1),
            timeout=warmup + seconds + 120,
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise RuntimeError(
                f"loadgen failed against {reactor} ({result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )
        data: dict[str, Any] = json.loads(result.stdout)
    finally:
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
    data["counters"] = counters
    data["reactor"] = reactor
    data["scenario"] = scenario.name
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
    rps = [r["rps"] for r in runs]
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
        "enters_per_req": statistics.median(r.get("enters_per_req", 0) for r in runs)
        if runs[0].get("enters_per_req") is not None
        else None,
    }


def table(
    scenarios: list[Scenario], reactors: list[str], summary: dict[Any, Any]
) -> str:
    header = (
        f"{'scenario':30s} {'reactor':13s} {'req/s':>9s} {'spread':>15s} "
        f"{'us/req':>7s} {'p50us':>6s} {'p99us':>6s} {'x epoll':>8s} "
        f"{'cpu x':>6s} {'lg cpu':>6s} {'enters/req':>10s}"
    )
    lines = [header, "-" * len(header)]
    for sc in scenarios:
        base = summary.get((sc.name, "epoll"))
        for reactor in reactors:
            s = summary.get((sc.name, reactor))
            if s is None:
                continue
            ratio = s["rps"] / base["rps"] if base else float("nan")
            cpuRatio = s["us_per_req"] / base["us_per_req"] if base else float("nan")
            spread = f"{s['rps_min'] / 1000:.1f}k-{s['rps_max'] / 1000:.1f}k"
            enters = (
                f"{s['enters_per_req']:.3f}" if s["enters_per_req"] is not None else "-"
            )
            flag = "" if s["errors"] == 0 else "  ERRORS!"
            lines.append(
                f"{sc.name:30s} {reactor:13s} {s['rps']:9.0f} {spread:>15s} "
                f"{s['us_per_req']:7.2f} {s['p50_us']:6.0f} {s['p99_us']:6.0f} "
                f"{ratio:7.2f}x {cpuRatio:5.2f}x {s['loadgen_cpu'] * 100:5.0f}% "
                f"{enters:>10s}{flag}"
            )
        lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import twisted

    info: dict[str, Any] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
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
    parser.add_argument("--reactors", default="iouring,epoll")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--json", default=None, help="where to write results")
    args = parser.parse_args()
    reactors = [r.strip() for r in args.reactors.split(",") if r.strip()]
    scenarios = QUICK if args.quick else FULL
    loadgen = buildLoadgen()
    info = machine()
    print(
        f"echo benchmark: {', '.join(reactors)}; {args.rounds} rounds of "
        f"{args.seconds:g}s (+{args.warmup:g}s warm-up); server on CPU 0, "
        f"load generator on CPU 1; kernel {info['kernel']}, Python "
        f"{info['python']}, Twisted {info['twisted']}",
        flush=True,
    )
    runs: dict[Any, list[dict[str, Any]]] = {}
    for sc in scenarios:
        for rnd in range(args.rounds):
            for reactor in reactors:
                r = measure(loadgen, reactor, sc, args.warmup, args.seconds)
                runs.setdefault((sc.name, reactor), []).append(r)
                print(
                    f"  {sc.name:30s} round {rnd + 1} {reactor:13s} "
                    f"{r['rps']:9.0f} req/s {r['server_us_per_req']:6.2f} us/req",
                    flush=True,
                )
    summary = {key: summarize(value) for key, value in runs.items()}
    print()
    print(table(scenarios, reactors, summary))
    out = Path(args.json) if args.json else BUILD / "bench" / "echo-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "scenarios": [asdict(s) for s in scenarios],
                "summary": [
                    {"scenario": k[0], "reactor": k[1], **v} for k, v in summary.items()
                ],
                "runs": [r for rs in runs.values() for r in rs],
            },
            indent=1,
        )
    )
    print(f"results: {out}")
    failed = any(s["errors"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
