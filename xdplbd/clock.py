"""The conntrack clock's calibration: jiffies and CLOCK_MONOTONIC_COARSE.

The data plane stamps conntrack entries in ticks of 2**tick_shift jiffies:
`bpf_jiffies64() >> tick_shift`, one load the BPF verifier inlines and a
shift, where the coarse-clock helper is a call. Tools read the same clock
from CLOCK_MONOTONIC_COARSE (conntrack.Clock):

    jiffies = (coarse_ns + offset_ns) // jiffy_ns

Both clocks advance together on the timer tick, so the offset is a constant
of the boot. This module measures jiffy_ns and the offset;
dataplane.set_settings writes them, and the shift, beside the LB's MAC.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

from . import bpfsys, conntrack, xdp_stub

CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it
BPF_FUNC_JIFFIES64 = 118  # enum bpf_func_id
_CALL = 0x85  # BPF_JMP | BPF_CALL
_EXIT = 0x95  # BPF_JMP | BPF_EXIT
_U32 = 1 << 32
_MAX_TRIES = 100


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


def _low_jiffies(prog_fd: int) -> int:
    return bpfsys.test_run(prog_fd, bytes(64)).retval & 0xFFFFFFFF


@functools.lru_cache(maxsize=1)
def calibrate() -> Calibration:
    """Measure jiffy_ns and the offset (needs CAP_BPF: it loads a 2-instruction
    program that returns bpf_jiffies64()). Cached: the offset is fixed for the boot."""
    jiffy = jiffy_ns()
    hz = round(1e9 / jiffy)
    fd = xdp_stub.load_insns(
        xdp_stub.insn(_CALL, imm=BPF_FUNC_JIFFIES64) + xdp_stub.insn(_EXIT), "xdplb_jiffies"
    )
    try:
        for _ in range(_MAX_TRIES):
            before = coarse_ns()
            low = _low_jiffies(fd)
            after = coarse_ns()
            if before == after:  # the same tick: jiffies and the clock agree exactly
                estimate = initial_jiffies(hz) + after // jiffy
                return Calibration(jiffy, offset_for(full_jiffies(low, estimate), jiffy, after))
    finally:
        os.close(fd)
    raise RuntimeError("cannot read jiffies and the coarse clock within one tick")


@functools.lru_cache(maxsize=1)
def local() -> conntrack.Clock:
    """This machine's conntrack clock, as set_settings writes it for the data plane."""
    cal = calibrate()
    return conntrack.Clock(cal.jiffy_ns, cal.offset_ns, conntrack.tick_shift_for(cal.jiffy_ns))


def now_tick() -> int:
    """The data plane's current tick (to within a jiffy)."""
    return local().tick_at(coarse_ns())
