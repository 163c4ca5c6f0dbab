"""The conntrack clock's calibration arithmetic (xdplbd/clock.py), pure."""

from __future__ import annotations

import pytest

from xdplbd import clock

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
