"""
Run trial with its verbose reporter and collect each test's outcome; shared
by the conformance and whole-suite comparisons.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_LINE = re.compile(r"^(\S+) \.\.\. \[(\w+)\]\s*$")


def runTrial(
    arguments: list[str], env: dict[str, str], cwd: Path, log: Path
) -> dict[str, str]:
    """
    Run C{trial --reporter=bwverbose ARGUMENTS} in C{cwd}, write its output
    to C{log}, and map each test's name to its outcome (C{OK}, C{FAILURE},
    C{ERROR}, C{SKIPPED}, ...).
    """
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "twisted.trial", "--reporter=bwverbose", *arguments]
    with log.open("w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    results = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            results[m.group(1)] = m.group(2)
    return results
