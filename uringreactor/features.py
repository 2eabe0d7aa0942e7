"""
Which io_uring features the reactor uses, decided once per ring.

Each feature is used only when the kernel has it, and each can be switched off
with C{URINGREACTOR_DISABLE=name,name,...} so that the paths taken on older
kernels can be exercised on a new one.  The names:

  - C{defer_taskrun}: create the ring with C{SINGLE_ISSUER | DEFER_TASKRUN}
    (6.1), so completions are processed only when the event loop asks for
    them, in one batch.
  - C{coop_taskrun}: C{COOP_TASKRUN} (5.19) when C{defer_taskrun} is off or
    unavailable.
  - C{submit_all}: C{SUBMIT_ALL} (5.18): one bad SQE does not stop the batch.
  - C{ring_fd}: register the ring fd (5.18), saving an fd lookup per enter.
  - C{multishot_accept}: one accept operation for all connections (5.19).
  - C{multishot_recv}: one recv operation per connection for all its data,
    into the provided buffer ring (6.0).
  - C{buf_ring}: a provided buffer ring (5.19) shared by all connections, so
    idle connections hold no read buffer.
  - C{cancel_any}: C{IORING_ASYNC_CANCEL_ANY} (5.19), used to drain a ring
    that is released without having been stopped.
  - C{spin_wait}: before blocking for completions, watch the rings from user
    space for a short while (C{URINGREACTOR_SPIN_US}, 50 microseconds by
    default, adapted to the traffic): an event that comes that soon costs no
    sleep and wake-up.  With C{defer_taskrun} or C{coop_taskrun} the ring is
    created with C{TASKRUN_FLAG} so that pending work shows in user space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

ALL_FEATURES = (
    "defer_taskrun",
    "coop_taskrun",
    "submit_all",
    "ring_fd",
    "multishot_accept",
    "multishot_recv",
    "buf_ring",
    "cancel_any",
    "spin_wait",
)

# The first kernel version that has each feature.
_MIN_KERNEL = {
    "defer_taskrun": (6, 1),
    "coop_taskrun": (5, 19),
    "submit_all": (5, 18),
    "ring_fd": (5, 18),
    "multishot_accept": (5, 19),
    "multishot_recv": (6, 0),
    "buf_ring": (5, 19),
    "cancel_any": (5, 19),
    "spin_wait": (5, 5),
}

# The default longest spin before blocking, in microseconds.
DEFAULT_SPIN_US = 50


def kernelVersion() -> tuple[int, int]:
    """
    The running kernel's (major, minor) version.
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
    raw = env.get("URINGREACTOR_DISABLE", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return frozenset(ALL_FEATURES)
    unknown = names - set(ALL_FEATURES)
    if unknown:
        raise ValueError(
            "URINGREACTOR_DISABLE names unknown features: "
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
    The optional features wanted for a ring: those the running kernel is
    recent enough for, minus those disabled through the environment.  The
    ring narrows this further to what the kernel actually accepted.
    """

    enabled: set[str] = field(default_factory=set)
    spinMicroseconds: int = DEFAULT_SPIN_US

    @classmethod
    def detect(cls, environ: dict[str, str] | None = None) -> Features:
        version = kernelVersion()
        disabled = disabledByEnvironment(environ)
        enabled = {
            name
            for name in ALL_FEATURES
            if name not in disabled and version >= _MIN_KERNEL[name]
        }
        # Multishot recv needs somewhere to put the data.
        if "buf_ring" not in enabled:
            enabled.discard("multishot_recv")
        spin = spinMicroseconds(environ)
        if not spin:
            enabled.discard("spin_wait")
        return cls(enabled, spin)

    def __contains__(self, name: str) -> bool:
        return name in self.enabled

    def discard(self, name: str) -> None:
        self.enabled.discard(name)
        if name == "buf_ring":
            self.enabled.discard("multishot_recv")
