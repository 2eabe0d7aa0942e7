"""
Which optional io_uring features the reactor uses, decided once per ring.

A feature is used when the running kernel passed its probe
(L{uringreactor.probe}) and the environment does not switch it off: each can
be disabled with C{URINGREACTOR_DISABLE=name,name,...} (or C{all}), so that
the paths older kernels take can be exercised on a new one.  The names:

  - C{defer_taskrun}: create the ring with C{SINGLE_ISSUER | DEFER_TASKRUN}
    (6.1), so completions are processed only when the event loop asks for
    them, in one batch.
  - C{coop_taskrun}: C{COOP_TASKRUN} (5.19) when C{defer_taskrun} is off or
    unavailable.
  - C{submit_all}: C{SUBMIT_ALL} (5.18): one bad SQE does not stop the batch.
  - C{ring_fd}: register the ring fd (5.18), saving an fd lookup per enter.
  - C{multishot_accept}: one accept operation for all connections (5.19).
  - C{buf_ring}: a provided buffer ring (5.19) shared by all connections, so
    idle connections hold no read buffer.
  - C{multishot_recv}: one recv (or recvmsg, for UDP) operation per socket
    for all its data, into the provided buffer ring (6.0).
  - C{spin_wait}: before blocking for completions, watch the rings from user
    space for a short while (C{URINGREACTOR_SPIN_US}, 50 microseconds by
    default, adapted to the traffic): an event that comes that soon costs no
    sleep and wake-up.  With C{defer_taskrun} or C{coop_taskrun} the ring is
    created with C{TASKRUN_FLAG} so that pending work shows in user space.

L{Features} also records, for every feature not in use, why: the kernel
lacks it (what the probe tried and what the kernel answered), the
environment disabled it, or another feature it needs is off.
C{python -m uringreactor} prints that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from uringreactor.probe import KernelSupport, kernelSupport

ALL_FEATURES = (
    "defer_taskrun",
    "coop_taskrun",
    "submit_all",
    "ring_fd",
    "multishot_accept",
    "buf_ring",
    "multishot_recv",
    "spin_wait",
)

# The probes each feature must pass.
_PROBES = {
    "defer_taskrun": ("defer_taskrun",),
    "coop_taskrun": ("coop_taskrun",),
    "submit_all": ("submit_all",),
    "ring_fd": ("ring_fd",),
    "multishot_accept": ("multishot_accept",),
    "buf_ring": ("buf_ring",),
    "multishot_recv": ("multishot_recv", "multishot_recvmsg"),
    "spin_wait": (),
}

# The default longest spin before blocking, in microseconds.
DEFAULT_SPIN_US = 50

DISABLE_ENV = "URINGREACTOR_DISABLE"


def kernelVersion() -> tuple[int, int]:
    """
    The running kernel's (major, minor) version, for messages only: what
    the reactor uses is probed, not inferred from this.
    """
    release = os.uname().release
    parts = []
    for piece in release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def disabledByEnvironment(environ: dict[str, str] | None = None) -> frozenset[str]:
    """
    The feature names listed in C{URINGREACTOR_DISABLE}.

    C{all} switches every optional feature off.  Unknown names raise
    C{ValueError} so that a typo does not silently test the wrong path.
    """
    env = os.environ if environ is None else environ
    raw = env.get(DISABLE_ENV, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return frozenset(ALL_FEATURES)
    unknown = names - set(ALL_FEATURES)
    if unknown:
        raise ValueError(
            f"{DISABLE_ENV} names unknown features: "
            + ", ".join(sorted(unknown))
            + "; known: "
            + ", ".join(ALL_FEATURES)
        )
    return frozenset(names)


def spinMicroseconds(environ: dict[str, str] | None = None) -> int:
    """
    The longest spin before blocking, from C{URINGREACTOR_SPIN_US}: a whole
    number of microseconds, 0 for none.
    """
    env = os.environ if environ is None else environ
    raw = env.get("URINGREACTOR_SPIN_US", "").strip()
    if not raw:
        return DEFAULT_SPIN_US
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 1_000_000:
        raise ValueError(
            f"URINGREACTOR_SPIN_US must be a whole number of microseconds "
            f"from 0 (never spin) to 1000000, not {raw!r}"
        )
    return value


@dataclass
class Features:
    """
    The optional features a ring uses.

    @ivar enabled: the names of the features in use.
    @ivar why: for each feature not in use, the reason.
    @ivar support: the probe results the decision came from.
    @ivar spinMicroseconds: the longest spin before blocking.
    """

    enabled: set[str] = field(default_factory=set)
    why: dict[str, str] = field(default_factory=dict)
    support: KernelSupport | None = None
    spinMicroseconds: int = DEFAULT_SPIN_US

    @classmethod
    def detect(
        cls,
        environ: dict[str, str] | None = None,
        support: KernelSupport | None = None,
    ) -> Features:
        """
        The features to use: those the kernel passed the probe for, less
        those the environment disables.

        @raise uringreactor.errors.IOUringUnavailable: io_uring is refused.
        """
        if support is None:
            support = kernelSupport()
        disabled = disabledByEnvironment(environ)
        self = cls(support=support, spinMicroseconds=spinMicroseconds(environ))
        for name in ALL_FEATURES:
            failed = [p for p in _PROBES[name] if not support.supports(p)]
            if name in disabled:
                self.why[name] = f"disabled by {DISABLE_ENV}"
            elif failed:
                self.why[name] = "the kernel lacks it: " + "; ".join(
                    support.why(p) for p in failed
                )
            else:
                self.enabled.add(name)
        if not self.spinMicroseconds:
            self.discard("spin_wait", "URINGREACTOR_SPIN_US is 0")
        if "buf_ring" not in self.enabled:
            self.discard("multishot_recv", "it needs buf_ring")
        if "defer_taskrun" in self.enabled:
            self.discard("coop_taskrun", "defer_taskrun is used instead")
            if "spin_wait" in self.enabled and not support.supports(
                "defer_taskrun_flag"
            ):
                # Deferred work would stay invisible to a spin.
                self.discard(
                    "spin_wait",
                    "with defer_taskrun it needs TASKRUN_FLAG: "
                    + support.why("defer_taskrun_flag"),
                )
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.enabled

    def discard(self, name: str, why: str) -> None:
        """
        Stop using a feature (and those that need it), saying why.
        """
        if name in self.enabled:
            self.enabled.discard(name)
            self.why[name] = why
        if name == "buf_ring":
            self.discard("multishot_recv", "it needs buf_ring")

    def describe(self) -> list[tuple[str, str]]:
        """
        Each feature with C{"used"} or the reason it is not.
        """
        return [
            (name, "used" if name in self.enabled else "not used: " + self.why[name])
            for name in ALL_FEATURES
        ]
