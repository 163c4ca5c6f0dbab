"""service/healthd.py's bookkeeping, without probing: pure, no root."""

from __future__ import annotations

import random
from typing import List

import pytest

from xdplbd.service.healthd import Lateness


def sorted_percentile_ms(samples: List[float], p: float) -> float:
    """What health.json reported when it sorted every sample."""
    late = sorted(samples)
    return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 2) if late else 0.0


@pytest.mark.parametrize("seed", range(20))
def test_lateness_percentiles_are_those_of_the_last_samples(seed: int) -> None:
    rnd = random.Random(seed)
    size = rnd.choice([1, 7, 100, 1000])
    late, kept = Lateness(size), []
    for _ in range(rnd.randint(0, 3 * size)):
        x = rnd.choice([0.0, rnd.uniform(-1e-6, 0.002), rnd.uniform(0, 0.65), rnd.uniform(0.7, 3)])
        late.add(x)
        kept = [*kept, x][-size:]
    assert late.samples == len(kept)
    for p in (0.0, 0.5, 0.99, 1.0):
        want, got = sorted_percentile_ms(kept, p), late.percentile_ms(p)
        if want <= 655:  # exact to the 10 us tick
            assert abs(got - want) <= 0.0100001, (p, got, want)
        else:  # 10 ms steps
            assert want - 10.0100001 <= got <= want + 0.0000001, (p, got, want)


def test_lateness_far_beyond_the_histogram() -> None:
    late = Lateness(4)
    for x in (0.001, 1.0, 5000.0, 0.002):
        late.add(x)
    assert late.percentile_ms(0.0) == 1.0
    assert late.percentile_ms(0.25) == 2.0
    assert late.percentile_ms(0.5) == 995.36  # the 10 ms step from 995.36 ms
    assert late.percentile_ms(1.0) == 655.36 + 4095 * 10  # the last step holds the rest
    assert Lateness(3).percentile_ms(0.99) == 0.0
