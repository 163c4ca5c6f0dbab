"""Measure the conntrack clock's calibration on this boot (core/clock.py has the arithmetic).

The offset between jiffies and CLOCK_MONOTONIC_COARSE is read with a
2-instruction BPF program that returns bpf_jiffies64(), run through
BPF_PROG_TEST_RUN in the same coarse-clock tick as two clock reads.
"""

from __future__ import annotations

import functools
import os

from xdplbd.core import conntrack
from xdplbd.core.clock import (
    Calibration,
    coarse_ns,
    full_jiffies,
    initial_jiffies,
    jiffy_ns,
    offset_for,
)
from xdplbd.kernel import libbpf

BPF_FUNC_JIFFIES64 = 118  # enum bpf_func_id
_CALL = 0x85  # BPF_JMP | BPF_CALL
_EXIT = 0x95  # BPF_JMP | BPF_EXIT
_MAX_TRIES = 100


def _low_jiffies(prog_fd: int) -> int:
    return libbpf.test_run(prog_fd, bytes(64)).retval & 0xFFFFFFFF


@functools.lru_cache(maxsize=1)
def calibrate() -> Calibration:
    """Measure jiffy_ns and the offset (needs CAP_BPF: it loads a 2-instruction
    program that returns bpf_jiffies64()). Cached: the offset is fixed for the boot."""
    jiffy = jiffy_ns()
    hz = round(1e9 / jiffy)
    fd = libbpf.load_insns(
        libbpf.insn(_CALL, imm=BPF_FUNC_JIFFIES64) + libbpf.insn(_EXIT), "xdplb_jiffies"
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
