"""
Run Twisted's whole test suite under the epoll reactor and under the io_uring
reactor and fail on any test that passes under epoll but fails, errors or is
skipped under io_uring.

    python tests/twisted_full_suite.py [-j N] [--suite twisted]

Tests whose outcomes differ are run again, one at a time, under both
reactors: a difference that does not repeat is reported as flaky (a test
that raced with another worker, say) and does not fail the run; one that
repeats does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from trialrun import runTrial

HERE = Path(__file__).resolve().parent


def trial(
    reactor: str, names: list[str], jobs: int, workdir: Path, log: Path
) -> dict[str, str]:
    arguments = [f"--reactor={reactor}", "--temp-directory=_trial_temp"]
    if jobs > 1:
        arguments.append(f"-j{jobs}")
    env = dict(os.environ)
    env.pop("URINGREACTOR_FALLBACK", None)
    return runTrial(arguments + names, env, workdir, log)


def differences(epoll: dict[str, str], iouring: dict[str, str]) -> list[str]:
    return sorted(
        name
        for name, outcome in epoll.items()
        if outcome == "OK" and iouring.get(name, "MISSING") != "OK"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--suite", default="twisted")
    parser.add_argument("--log-dir", default=str(HERE.parent / "build" / "full-suite"))
    args = parser.parse_args()
    logDir = Path(args.log_dir)
    logDir.mkdir(parents=True, exist_ok=True)
    results = {}
    for reactor in ("epoll", "iouring"):
        started = time.monotonic()
        results[reactor] = trial(
            reactor,
            [args.suite],
            args.jobs,
            logDir / reactor,
            logDir / f"{reactor}.log",
        )
        counts: dict[str, int] = {}
        for outcome in results[reactor].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(
            f"trial --reactor={reactor} -j{args.jobs} {args.suite}: "
            f"{len(results[reactor])} tests in {time.monotonic() - started:.0f}s: "
            f"{summary}",
            flush=True,
        )
    if len(results["epoll"]) < 1000 and args.suite == "twisted":
        print("too few results parsed: the trial runs failed", file=sys.stderr)
        return 2
    diff = differences(results["epoll"], results["iouring"])
    if not diff:
        print(
            "no test that passes under epoll fails, errors or is skipped under iouring"
        )
        return 0
    print(f"{len(diff)} tests differ; running them again one at a time:")
    again = {
        reactor: trial(
            reactor,
            diff,
            1,
            logDir / f"{reactor}-again",
            logDir / f"{reactor}-again.log",
        )
        for reactor in ("epoll", "iouring")
    }
    confirmed = differences(again["epoll"], again["iouring"])
    for name in diff:
        status = "DIFFERS" if name in confirmed else "flaky (passed on rerun)"
        print(
            f"  {name}: epoll {results['epoll'][name]}, iouring "
            f"{results['iouring'].get(name, 'MISSING')} -> {status}"
        )
    if confirmed:
        print(f"{len(confirmed)} tests pass under epoll but not under iouring")
        return 1
    print("every difference was flaky; no test fails under iouring alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
