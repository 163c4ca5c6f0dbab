"""The data plane against its reference model, frame by frame (differential.py).

Each run draws a fresh seed (or takes XDPLB_DIFF_SEED) and prints it; any
failure names the seed and the frame, and XDPLB_DIFF_SEED=<seed> replays the
run exactly. XDPLB_DIFF_FRAMES sets the length of the seeded run (`make fuzz`
runs 10^7).
"""

from __future__ import annotations

import functools
import os
import time
from array import array
from typing import Dict, Sequence, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dataplane.differential import FIXED_VIPS, Chooser, Session, seed_from_env
from tests.dataplane.harness import DataPlaneHarness

T = TypeVar("T")

SEEDED_FRAMES = int(os.environ.get("XDPLB_DIFF_FRAMES", "100000"))


def test_seeded_frames_agree(dpx: DataPlaneHarness) -> None:
    """The bulk: 100,000 frames a run, over random configs and histories."""
    import random

    seed = seed_from_env()
    print(f"\ndifferential: XDPLB_DIFF_SEED={seed} XDPLB_DIFF_FRAMES={SEEDED_FRAMES}")
    t0 = time.monotonic()
    last = [t0]

    def progress(n: int) -> None:
        if SEEDED_FRAMES >= 1_000_000 and time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  {n} frames, {n / (last[0] - t0):.0f}/s", flush=True)

    s = Session(dpx, seed)
    seen = s.run(Chooser(random.Random(seed)), SEEDED_FRAMES, progress=progress)
    print(f"differential: {s.frames} frames in {time.monotonic() - t0:.1f} s: {seen}")
    assert s.frames == SEEDED_FRAMES
    # The run reached every verdict and the hit path, or it proved little.
    floors = {"tx": SEEDED_FRAMES // 100, "pass": SEEDED_FRAMES // 100,
              "ct_hit": SEEDED_FRAMES // 100, "drop": SEEDED_FRAMES // 1000}
    assert all(seen.get(k, 0) >= n for k, n in floors.items()), (seen, floors)


class DrawChooser(Chooser):
    """Choices drawn from hypothesis, so that a failing example shrinks."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(_integers(lo, hi))

    def chance(self, p: float) -> bool:
        return self.int(0, 999) < p * 1000

    def bytes(self, n: int) -> bytes:
        # A short draw, repeated: hypothesis keeps each example's choices small.
        head = self.data.draw(_binary(min(n, 8)))
        return (head * (n // max(1, len(head)) + 1))[:n]


@functools.cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)  # built once: a strategy costs more to build than to draw


@functools.cache
def _binary(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck),
          print_blob=True)
@given(st.data())
def test_hypothesis_frames_agree(dpx_diff: DataPlaneHarness, data: st.DataObject) -> None:
    """Structured frames, settings and flow histories from hypothesis, 1-40
    frames an example, on one config with a bit of everything (the seeded run
    changes configs); a failure shrinks to a short history and prints how to
    replay it."""
    c = DrawChooser(data)
    s = Session(dpx_diff, 0, "replay: the falsifying example above (@reproduce_failure)",
                TABLES.pop(id(dpx_diff), None))
    s.run(c, c.int(1, 40), vips=FIXED_VIPS)
    assert s.model is not None
    TABLES[id(dpx_diff)] = s.model.conntrack  # checked equal to the program's


# The connection table as the last example left it and checked it, so the next
# example need not read it again (after a failure it does).
TABLES: Dict[int, array] = {}
