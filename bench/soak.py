"""
Soak: mixed load on one io_uring reactor for a long time, watching its
resident memory, open descriptors and in-flight operations.

    python bench/soak.py [--minutes 10] [--reactor iouring]

The server (bench/server.py --app mixed) serves echo and twisted.web on two
ports and reports its statistics every second.  The driver keeps it busy in
rounds: verified echo load from bench/loadgen.c with a varying number of
connections, wrk against the web port, and connection churn from
bench/churn.c, all at once; between rounds the server is idle for a moment,
which is when descriptors and in-flight operations must be back to their
baseline.  At the end it prints the statistics over time and fails if
descriptors or operations leaked or memory kept growing.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build"


def build(name: str, extra: list[str]) -> str:
    source = HERE / f"{name}.c"
    binary = BUILD / name
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(source), *extra], check=True
        )
    return str(binary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--reactor", default="iouring")
    args = parser.parse_args()
    loadgen = build("loadgen", [])
    churn = build("churn", ["-pthread"])
    wrk = shutil.which("wrk")
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), args.reactor, "--app", "mixed"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    webPort = int(server.stdout.readline().split()[1])
    samples: list[dict[str, Any]] = []

    def collect() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("STATS"):
                samples.append(json.loads(line.split(" ", 1)[1]))

    threading.Thread(target=collect, daemon=True).start()
    time.sleep(2)
    rng = random.Random(7)
    deadline = time.monotonic() + args.minutes * 60
    idle: list[dict[str, Any]] = []
    rounds = 0
    problems: list[str] = []
    while time.monotonic() < deadline:
        rounds += 1
        conns = rng.choice([16, 64, 256, 1000])
        size = rng.choice([64, 512, 4096])
        jobs = [
            subprocess.Popen(
                [
                    loadgen,
                    "127.0.0.1",
                    str(port),
                    str(conns),
                    str(size),
                    "2",
                    "0.5",
                    "5",
                    str(server.pid),
                ],
                stdout=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(
                [churn, "127.0.0.1", str(port), "3000", "64", "4"],
                stdout=subprocess.PIPE,
                text=True,
            ),
        ]
        if wrk:
            jobs.append(
                subprocess.Popen(
                    [wrk, "-t1", "-c32", "-d5s", f"http://127.0.0.1:{webPort}/"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for job in jobs:
            out, _ = job.communicate()
            if job.returncode != 0:
                program = str(job.args[0])  # type: ignore[index]
                problems.append(f"round {rounds}: {program} exited {job.returncode}")
            if out.startswith("{"):
                result = json.loads(out)
                if (
                    result.get("errors")
                    or result.get("verify_failures")
                    or result.get("failures")
                ):
                    problems.append(f"round {rounds}: {out.strip()}")
        time.sleep(1.5)
        if samples:
            idle.append(dict(samples[-1], round=rounds))
    server.terminate()
    server.wait(timeout=30)

    print(f"soak of {args.reactor}: {args.minutes:g} min, {rounds} rounds")
    header = f"{'t (s)':>7s} {'RSS (MiB)':>10s} {'fds':>6s} {'in flight':>10s}"
    print(header + "   (idle, between rounds)")
    step = max(1, len(idle) // 20)
    for s in idle[::step] + ([idle[-1]] if idle else []):
        print(
            f"{s['t']:7.0f} {s['rss'] / 2**20:10.1f} {s['fds']:6d} {s['in_flight']:10d}"
        )
    if len(idle) >= 4:
        settled = idle[len(idle) // 4 :]
        fds = {s["fds"] for s in settled}
        ops = {s["in_flight"] for s in settled}
        firstRss = statistics.median(
            s["rss"] for s in settled[: len(settled) // 3 or 1]
        )
        lastRss = statistics.median(
            s["rss"] for s in settled[-(len(settled) // 3 or 1) :]
        )
        print(
            f"idle fds {sorted(fds)}, idle in-flight {sorted(ops)}, "
            f"RSS {firstRss / 2**20:.1f} -> {lastRss / 2**20:.1f} MiB"
        )
        if len(fds) > 1:
            problems.append(f"descriptors not flat when idle: {sorted(fds)}")
        if len(ops) > 1:
            problems.append(f"in-flight operations not flat when idle: {sorted(ops)}")
        if lastRss > firstRss * 1.10 + (8 << 20):
            problems.append("resident memory kept growing")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
