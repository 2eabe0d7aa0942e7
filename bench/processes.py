"""
Child processes on a reactor chosen by name: the process benchmarks.

    python bench/processes.py REACTOR pipe|spawn WARMUP_S SECONDS

  - C{pipe}: one child (C{dd}, 1 MiB writes) writes 256 MiB to its stdout
    through C{spawnProcess}; the protocol counts and checks every byte (all
    zero).  A "request" is a MiB read; the rate is MiB/s.
  - C{spawn}: short-lived children (C{/bin/true}), 8 alive at a time, each
    replaced as soon as C{processEnded} reports it; the rate is spawns per
    second, the latency from C{spawnProcess} to C{processEnded}.

Prints one JSON object in the form of the load generators (requests, rps,
latency percentiles, errors, the process's own CPU time over the measured
window as C{server_cpu_s}), for bench/compare.py.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server import installReactor  # noqa: E402

PIPE_BYTES = 256 << 20
PARALLEL_SPAWNS = 8


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_us": float("nan"), "p99_us": float("nan")}
    ordered = sorted(latencies)
    return {
        "p50_us": ordered[len(ordered) // 2] * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
    }


def pipe(reactor: Any, warmup: float, seconds: float) -> dict[str, Any]:
    """
    Read 256 MiB from a child's stdout; C{warmup} and C{seconds} are not
    used (one transfer is one measurement).
    """
    from twisted.internet import protocol

    result: dict[str, Any] = {}
    # Longer than any one read from a pipe.
    zeros = bytes(1 << 20)

    class Reader(protocol.ProcessProtocol):
        received = 0
        corrupt = 0

        def outReceived(self, data: bytes) -> None:
            self.received += len(data)
            if data != zeros[: len(data)]:
                self.corrupt += 1

        def processEnded(self, reason: Any) -> None:
            elapsed = time.monotonic() - started
            result.update(
                seconds=elapsed,
                requests=self.received / (1 << 20),
                rps=self.received / (1 << 20) / elapsed,
                server_cpu_s=_cpu() - cpu0,
                errors=int(self.received != PIPE_BYTES or reason.value.exitCode != 0),
                verify_failures=self.corrupt,
            )
            reactor.stop()

    started = time.monotonic()
    cpu0 = _cpu()
    reactor.spawnProcess(
        Reader(),
        "dd",
        ["dd", "if=/dev/zero", "bs=1M", f"count={PIPE_BYTES >> 20}", "status=none"],
        env=os.environ,
    )
    reactor.run()
    result.update(p50_us=float("nan"), p99_us=float("nan"))
    return result


def spawn(reactor: Any, warmup: float, seconds: float) -> dict[str, Any]:
    """
    Keep 8 C{/bin/true} children alive for C{warmup + seconds}; count those
    that end within the last C{seconds}.
    """
    from twisted.internet import protocol

    state: dict[str, Any] = {"ended": 0, "errors": 0, "measuring": False}
    latencies: list[float] = []
    started = time.monotonic()
    window: dict[str, float] = {}

    class Child(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.spawned = time.monotonic()

        def processEnded(self, reason: Any) -> None:
            now = time.monotonic()
            if reason.value.exitCode != 0:
                state["errors"] += 1
            if state["measuring"]:
                state["ended"] += 1
                latencies.append(now - self.spawned)
            if now - started < warmup + seconds:
                launch()

    def launch() -> None:
        reactor.spawnProcess(Child(), "/bin/true", ["true"], env={})

    def startMeasuring() -> None:
        state["measuring"] = True
        window["t0"] = time.monotonic()
        window["cpu0"] = _cpu()

    def stop() -> None:
        window["t1"] = time.monotonic()
        window["cpu1"] = _cpu()
        state["measuring"] = False
        # Children still running end after the window; let them go.
        reactor.callLater(0.5, reactor.stop)

    for _ in range(PARALLEL_SPAWNS):
        launch()
    reactor.callLater(warmup, startMeasuring)
    reactor.callLater(warmup + seconds, stop)
    reactor.run()
    elapsed = window["t1"] - window["t0"]
    return {
        "seconds": elapsed,
        "requests": state["ended"],
        "rps": state["ended"] / elapsed,
        "server_cpu_s": window["cpu1"] - window["cpu0"],
        "errors": state["errors"],
        "verify_failures": 0,
        **_percentiles(latencies),
    }


def main() -> None:
    name, mode, warmup, seconds = sys.argv[1:5]
    installReactor(name)
    from twisted.internet import reactor

    run = {"pipe": pipe, "spawn": spawn}[mode]
    result = run(reactor, float(warmup), float(seconds))
    result.update(loadgen_cpu_s=0.0, connections=1)
    counters = getattr(reactor, "ioCounters", None)
    result["counters"] = counters() if counters else None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
