"""The conntrack clock's calibration: jiffies and CLOCK_MONOTONIC_COARSE.

The data plane stamps conntrack entries in ticks of 2**tick_shift jiffies:
`bpf_jiffies64() >> tick_shift`, one load the BPF verifier inlines and a
shift, where the coarse-clock helper is a call. Tools read the same clock
from CLOCK_MONOTONIC_COARSE (conntrack.Clock):

    jiffies = (coarse_ns + offset_ns) // jiffy_ns

Both clocks advance together on the timer tick, so the offset is a constant
of the boot. This module holds the arithmetic (pure, root-free); kernel/jiffies.py
measures jiffy_ns and the offset, and kernel/dataplane.set_settings writes
them, and the shift, beside the LB's MAC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it
_U32 = 1 << 32


@dataclass(frozen=True)
class Calibration:
    jiffy_ns: int
    offset_ns: int


def jiffy_ns() -> int:
    """The kernel's tick length (TICK_NSEC): the coarse clocks' resolution."""
    return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)


def coarse_ns() -> int:
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def full_jiffies(low32: int, estimate: int) -> int:
    """The 64-bit jiffies whose low 32 bits are `low32`, nearest to `estimate`.

    A BPF program returns only 32 bits; `estimate` (from the coarse clock and
    INITIAL_JIFFIES) is far closer than 2**31 jiffies, so this is exact."""
    base = estimate - (estimate % _U32) + low32
    return min((base - _U32, base, base + _U32), key=lambda j: abs(j - estimate))


def initial_jiffies(hz: int) -> int:
    """INITIAL_JIFFIES on a 64-bit kernel: (unsigned long)(unsigned int)(-300 * HZ)."""
    return (-300 * hz) % _U32


def offset_for(jiffies: int, jiffy: int, coarse: int) -> int:
    """clock_offset_ns for a jiffies value read in the same tick as `coarse`
    (mod 2**64: the data plane's u64 arithmetic wraps the same way)."""
    return (jiffies * jiffy - coarse) % (1 << 64)
