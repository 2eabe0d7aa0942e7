"""
Run Twisted's ReactorBuilder suites for the epoll and the io_uring reactor in
one trial run and fail on any test that passes for epoll but not for
io_uring (a skip is not a pass).

    python tests/twisted_conformance.py [-j N] [--disable all]

C{--disable} sets C{URINGREACTOR_DISABLE} for the run, to exercise the paths
taken on kernels without the optional io_uring features.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from trialrun import runTrial

HERE = Path(__file__).resolve().parent
EPOLL = "_EPollReactorTests."
IOURING = "_IOUringReactorTests."


def run(jobs: int, disable: str | None, log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    if disable:
        env["URINGREACTOR_DISABLE"] = disable
    workdir = log.parent / ("trial-" + (disable or "default").replace(",", "-"))
    results = runTrial(
        [
            f"-j{jobs}",
            f"--temp-directory={workdir / '_trial_temp'}",
            "twisted_builders",
        ],
        env,
        workdir,
        log,
    )
    return {
        name: outcome
        for name, outcome in results.items()
        if name.startswith("twisted_builders.")
    }


def compare(results: dict[str, str]) -> tuple[list[str], Counter[str], Counter[str]]:
    """
    Return the tests that pass on epoll but not on io_uring, and the outcome
    counts per reactor.
    """
    differences = []
    epoll: Counter[str] = Counter()
    iouring: Counter[str] = Counter()
    for name, outcome in results.items():
        if EPOLL in name:
            epoll[outcome] += 1
            twin = name.replace(EPOLL, IOURING)
            theirs = results.get(twin, "MISSING")
            if outcome == "OK" and theirs != "OK":
                differences.append(f"{twin}: {theirs} (epoll: OK)")
        elif IOURING in name:
            iouring[outcome] += 1
    return sorted(differences), epoll, iouring


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument(
        "--disable",
        default=None,
        help="URINGREACTOR_DISABLE value for the io_uring reactor (e.g. all)",
    )
    parser.add_argument("--log-dir", default=str(HERE.parent / "build" / "conformance"))
    args = parser.parse_args()
    logDir = Path(args.log_dir)
    logDir.mkdir(parents=True, exist_ok=True)
    label = args.disable or "default"
    log = logDir / f"trial-{label.replace(',', '-')}.log"
    started = time.monotonic()
    results = run(args.jobs, args.disable, log)
    elapsed = time.monotonic() - started
    differences, epoll, iouring = compare(results)
    print(
        f"ReactorBuilder suites, io_uring features disabled: {label} "
        f"({elapsed:.0f}s, log: {log})"
    )
    for name, counts in (("epoll", epoll), ("iouring", iouring)):
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"  {name:8s} {sum(counts.values()):5d} tests: {summary}")
    if not results or not epoll or not iouring:
        print("  no results parsed: the trial run itself failed")
        print(log.read_text(errors="replace")[-4000:])
        return 2
    if differences:
        print(f"  {len(differences)} tests pass on epoll but not on iouring:")
        for line in differences:
            print("    " + line)
        return 1
    print("  every test that passes on epoll passes on iouring")
    return 0


if __name__ == "__main__":
    sys.exit(main())
