"""The counters ledger (xdplbd/ledger.py): per-VIP totals that only grow."""

from __future__ import annotations

from typing import List, Tuple

from xdplbd.core import ledger
from xdplbd.core.ledger import ACTIVE, FREE, RealEntry, VipEntry

Counter = Tuple[int, int]
VIP = 1  # VIP id 1 owns slots 1 and 2; VIP id 0 owns slot 3


def _setup() -> Tuple[List[RealEntry], List[Counter], List[VipEntry], List[Counter]]:
    reals = [RealEntry(), ledger.join(VIP, (5, 500)), ledger.join(VIP, (0, 0)),
             ledger.join(0, (0, 0))]
    stats = [(0, 0), (25, 2500), (7, 700), (3, 300)]  # slot 1 had 5 before its real
    vips = [VipEntry(), VipEntry(departed=(100, 10_000), generation=4)]
    drops = [(0, 0), (2, 200)]
    return reals, stats, vips, drops


def _total(reals: List[RealEntry], stats: List[Counter], vips: List[VipEntry],
           drops: List[Counter]) -> Counter:
    return ledger.vip_counts(dict(enumerate(reals)), dict(enumerate(stats)), vips, drops)[VIP]


def test_a_vip_total_is_drops_departed_and_its_reals_since_they_joined() -> None:
    reals, stats, vips, drops = _setup()
    assert ledger.vip_counts(dict(enumerate(reals)), dict(enumerate(stats)), vips,
                             drops) == [(3, 300), (2 + 100 + 20 + 7,
                                                                      200 + 10_000 + 2000 + 700)]
    assert ledger.real_count(reals[1], stats[1]) == (20, 2000)


def test_a_removal_shows_once_at_every_step() -> None:
    reals, stats, vips, drops = _setup()
    want = _total(reals, stats, vips, drops)
    reals[1] = retired = ledger.retire(reals[1], stats[1], vips[VIP])
    assert _total(reals, stats, vips, drops) == want
    stats[1] = (30, 3000)  # a packet in flight after the real left: tx only
    assert _total(reals, stats, vips, drops) == want
    vips[VIP] = ledger.fold(vips[VIP], retired)
    assert _total(reals, stats, vips, drops) == want
    reals[1] = ledger.free(retired)
    assert reals[1].state == FREE and _total(reals, stats, vips, drops) == want
    # The next real in the slot starts from the slot's count.
    reals[1] = ledger.join(VIP, stats[1])
    assert ledger.real_count(reals[1], stats[1]) == (0, 0)
    assert _total(reals, stats, vips, drops) == want


def test_a_freed_vip_id_starts_from_nothing() -> None:
    _reals, _stats, vips, _drops = _setup()
    fresh = ledger.reset(vips[VIP])
    assert fresh.departed == (0, 0) and fresh.generation != vips[VIP].generation


def test_only_records_in_use_are_decoded() -> None:
    reals, _stats, _vips, _drops = _setup()
    raw = b"".join(e.pack() for e in reals)
    assert ledger.entries_in_use(raw) == {1: reals[1], 2: reals[2], 3: reals[3]}


def test_pack_round_trips() -> None:
    e = RealEntry(7, ledger.RETIRED, (1, 2), (3, 4), 9)
    assert ledger.real_entry(e.pack()) == e
    v = VipEntry((5, 6), 8)
    assert ledger.vip_entry(v.pack()) == v
    assert ledger.real_entry(None) == RealEntry() and ledger.vip_entry(b"") == VipEntry()


def _repaired(reals: List[RealEntry], vips: List[VipEntry], active: dict, live: set,
              stats: List[Counter]) -> Tuple[List[RealEntry], List[VipEntry]]:
    by_slot = dict(enumerate(stats))
    fix = ledger.repair(dict(enumerate(reals)), vips, active, live, by_slot)
    reals = [fix.reals.get(i, e) for i, e in enumerate(reals)]
    vips = [fix.vips.get(i, e) for i, e in enumerate(vips)]
    again = ledger.repair(dict(enumerate(reals)), vips, active, live, by_slot)
    assert again.reals == {} and again.vips == {}, "repair is idempotent"
    return reals, vips


ACTIVE_NOW = {2: VIP, 3: 0}  # slot 1's real was removed
LIVE = {0, VIP}


def test_repair_after_a_kill_at_each_step_of_a_removal() -> None:
    reals, stats, vips, drops = _setup()
    want = _total(reals, stats, vips, drops)
    retired = ledger.retire(reals[1], stats[1], vips[VIP])
    folded = ledger.fold(vips[VIP], retired)
    killed_at = {
        "after the backend was emptied": (reals, vips),
        "after retire": ([reals[0], retired, *reals[2:]], vips),
        "after fold": ([reals[0], retired, *reals[2:]], [vips[0], folded]),
    }
    for step, (r, v) in killed_at.items():
        r2, v2 = _repaired(list(r), list(v), ACTIVE_NOW, LIVE, stats)
        assert r2[1].state == FREE, step
        assert _total(r2, stats, v2, drops) == want, step


def test_repair_adopts_reals_that_pins_from_an_older_build_hold() -> None:
    _reals, stats, vips, _drops = _setup()
    empty = [RealEntry()] * 4
    r2, _v2 = _repaired(empty, vips, {1: VIP, 2: VIP, 3: 0}, LIVE, stats)
    assert [e.state for e in r2] == [FREE, ACTIVE, ACTIVE, ACTIVE]
    assert ledger.real_count(r2[1], stats[1]) == (0, 0)  # it counts from now on


def test_repair_drops_a_real_whose_vip_is_gone_without_a_fold() -> None:
    reals, stats, vips, _drops = _setup()
    r2, v2 = _repaired(reals, vips, {3: 0}, {0}, stats)
    assert r2[1].state == r2[2].state == FREE and v2[VIP] == vips[VIP]
