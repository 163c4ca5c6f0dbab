"""The conntrack clock's calibration arithmetic (xdplbd/clock.py), pure."""

from __future__ import annotations

import pytest

from xdplbd.core import clock, conntrack

U32 = 1 << 32


@pytest.mark.parametrize("true", [5, U32 - 3, U32 + 7, 3 * U32 + 12345, 2**40 + 2**31 + 9])
@pytest.mark.parametrize("error", [0, 1000, -1000, 2**30, -(2**30)])
def test_full_jiffies_restores_the_high_bits(true: int, error: int) -> None:
    assert clock.full_jiffies(true % U32, true + error) == true


@pytest.mark.parametrize("hz, want", [(100, U32 - 30_000), (250, U32 - 75_000),
                                      (1000, U32 - 300_000)])
def test_initial_jiffies_is_minus_300_seconds_in_32_bits(hz: int, want: int) -> None:
    assert clock.initial_jiffies(hz) == want


def test_the_offset_maps_jiffies_onto_the_coarse_clock() -> None:
    jiffy, jiffies, coarse = 4_000_000, U32 + 1234, 987_654_321_000
    offset = clock.offset_for(jiffies, jiffy, coarse)
    later = jiffies + 250  # one second of HZ=250 ticks
    assert (later * jiffy - offset) % 2**64 == coarse + 250 * jiffy


@pytest.mark.parametrize("hz, shift, tick_s", [(1000, 10, 1.024), (250, 8, 1.024),
                                               (100, 7, 1.28), (300, 9, 1.707)])
def test_a_tick_is_the_fewest_power_of_two_jiffies_of_a_second(hz: int, shift: int,
                                                              tick_s: float) -> None:
    jiffy = (10**9 + hz // 2) // hz  # the kernel's TICK_NSEC
    assert conntrack.tick_shift_for(jiffy) == shift
    clk = conntrack.Clock(jiffy, 0, shift)
    assert clk.tick_ns >= 10**9 and clk.tick_ns / 1e9 == pytest.approx(tick_s, abs=0.001)
    assert clk.timeout_ticks(30 * 10**9) == int(30e9 // clk.tick_ns)
    # An entry's timestamp wraps after 2**16 ticks: later than the 18 h cap.
    assert clk.timeout_ticks(18 * 3600 * 10**9) < 2**16


def test_the_tools_tick_is_the_data_planes() -> None:
    # jiffies = (coarse + offset) / jiffy; the data plane's tick is jiffies >> shift.
    jiffy, shift = 4_000_000, 8
    jiffies = U32 + 123_456
    coarse = 10**12
    offset = clock.offset_for(jiffies, jiffy, coarse)
    clk = conntrack.Clock(jiffy, offset, shift)
    for later in (0, 1, 255, 256, 10**6):
        assert clk.tick_at(coarse + later * jiffy) == ((jiffies + later) >> shift) & 0xFFFF
