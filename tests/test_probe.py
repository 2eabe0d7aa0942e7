"""
Features are probed, not guessed: what a reactor uses is exactly what the
running kernel passed the probe for, less what the environment disables, and
every feature not in use says why.  C{python -m uringreactor} reports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from uringreactor.features import ALL_FEATURES, Features
from uringreactor.probe import PROBES, KernelSupport, kernelSupport
from uringreactor.reactor import IOUringReactor


def _support(**failures: int) -> KernelSupport:
    results = {name: 0 for name in PROBES}
    results.update(failures)
    return KernelSupport(results, 0)


def test_everyProbeHasAResult() -> None:
    support = kernelSupport()
    assert set(support.results) == set(PROBES)
    for name, result in support.results.items():
        assert result <= 0, (name, result)


def test_reactorUsesExactlyWhatWasDetected(uring: IOUringReactor) -> None:
    """
    On this kernel, a reactor uses every feature the probe found and the
    environment allows, and no other.
    """
    expected = Features.detect()
    assert uring.features == frozenset(expected.enabled)
    support = kernelSupport()
    for name in uring.features:
        assert name in ALL_FEATURES
    if "multishot_accept" in uring.features:
        assert support.supports("multishot_accept")
    if "defer_taskrun" in uring.features:
        assert support.supports("defer_taskrun")


def test_featureTheKernelLacksSaysWhatFailed() -> None:
    errno_EINVAL = -22
    features = Features.detect(
        environ={}, support=_support(multishot_accept=errno_EINVAL)
    )
    assert "multishot_accept" not in features
    why = features.why["multishot_accept"]
    assert "a multishot accept answered EINVAL" in why
    assert "Linux 5.19" in why
    assert "buf_ring" in features


def test_receiveNeedsBothMultishotProbes() -> None:
    features = Features.detect(environ={}, support=_support(multishot_recvmsg=-22))
    assert "multishot_recv" not in features
    assert "recvmsg" in features.why["multishot_recv"]


def test_dependentFeaturesFollow() -> None:
    features = Features.detect(environ={}, support=_support(buf_ring=-22))
    assert "multishot_recv" not in features
    assert features.why["multishot_recv"] == "it needs buf_ring"
    features = Features.detect(environ={}, support=_support(defer_taskrun_flag=-22))
    assert "defer_taskrun" in features
    assert "spin_wait" not in features
    assert "TASKRUN_FLAG" in features.why["spin_wait"]


def test_disabledByEnvironment() -> None:
    features = Features.detect(
        environ={"URINGREACTOR_DISABLE": "all"}, support=_support()
    )
    assert features.enabled == set()
    for name, state in features.describe():
        assert state == "not used: disabled by URINGREACTOR_DISABLE", name


def test_unknownFeatureNameRefused() -> None:
    with pytest.raises(ValueError, match="unknown features: cancel_anything"):
        Features.detect(
            environ={"URINGREACTOR_DISABLE": "cancel_anything"}, support=_support()
        )


def _diagnose(prelude: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)
    environ.pop("URINGREACTOR_DISABLE", None)
    environ.update(env)
    code = (
        prelude
        + "\nimport runpy\nrunpy.run_module('uringreactor', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_diagnosticReportsEveryFeature() -> None:
    result = _diagnose()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"Linux {os.uname().release}" in out
    assert "liburing:" in out
    for name in ALL_FEATURES:
        assert f"  {name} " in out, name
    assert "RLIMIT_MEMLOCK" in out and "RLIMIT_NOFILE" in out
    assert "kernel.io_uring_disabled" in out
    assert out.rstrip().endswith(
        "reactor: ok (uringreactor.install() will use io_uring here)"
    )


def test_diagnosticNamesDisabledFeatures() -> None:
    result = _diagnose(URINGREACTOR_DISABLE="all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("not used: disabled by URINGREACTOR_DISABLE") == len(
        ALL_FEATURES
    )
    assert "features in use: none" in result.stdout


def test_diagnosticExplainsARefusal() -> None:
    """
    Under a seccomp filter refusing io_uring (as Docker's default profile
    does), the diagnostic names the cause and the fix and exits 1.
    """
    pytest.importorskip("pyseccomp")
    prelude = textwrap.dedent(
        """
        import errno, pyseccomp
        f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "io_uring_setup")
        f.load()
        """
    )
    result = _diagnose(prelude)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reactor: unavailable" in result.stdout
    assert "seccomp" in result.stdout
    assert "Fix: run the container with a seccomp profile" in result.stdout
    assert "URINGREACTOR_FALLBACK=epoll" in result.stdout
