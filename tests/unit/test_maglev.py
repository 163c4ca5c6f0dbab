"""Weighted Maglev: balance, minimal disruption, determinism, and a reference check."""

from __future__ import annotations

import collections
import hashlib
import random
from typing import Dict, List, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from xdplbd.core import maglev
from xdplbd.core.maglev import populate, ring_digest

M = 65537
REALS = [f"10.0.0.{i}" for i in range(1, 11)]


def reference(weights: Mapping[str, int], m: int) -> List[int]:
    """The textbook algorithm (paper, Pseudocode 1) with weighted turns, written plainly."""
    names = sorted(weights)
    ws = [weights[n] for n in names]
    entry = [-1] * m
    if max(ws, default=0) <= 0:
        return entry
    offset, skip = [], []
    for n in names:
        h = hashlib.sha256(n.encode()).digest()
        offset.append(int.from_bytes(h[:8], "big") % m)
        skip.append(int.from_bytes(h[8:16], "big") % (m - 1) + 1)
    nxt = [0] * len(names)
    w_max = max(ws)
    filled, r = 0, 0
    while True:
        for i, w in enumerate(ws):
            if (r + 1) * w // w_max <= r * w // w_max:
                continue  # not this real's turn in round r
            c = (offset[i] + nxt[i] * skip[i]) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % m
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return entry
        r += 1


def shares(ring: List[int], names: List[str]) -> Dict[str, float]:
    counts = collections.Counter(ring)
    return {n: counts[i] / len(ring) for i, n in enumerate(names)}


def owners(weights: Mapping[str, int], m: int) -> List[str]:
    names = sorted(weights)
    return [names[i] for i in populate(weights, m)]


def test_equal_weights_balance_within_one_percent() -> None:
    w = {n: 1 for n in REALS}
    for name, share in shares(populate(w, M), sorted(w)).items():
        assert abs(share - 0.1) <= 0.01 * 0.1, (name, share)


def test_weighted_shares_within_one_percent() -> None:
    w = {n: i + 1 for i, n in enumerate(REALS[:5])}  # weights 1..5
    total = sum(w.values())
    for name, share in shares(populate(w, M), sorted(w)).items():
        want = w[name] / total
        assert abs(share - want) <= 0.01 * want, (name, share, want)


def test_extreme_weights_still_proportional() -> None:
    w = {"10.0.0.1": 1, "10.0.0.2": 1000, "10.0.0.3": 7}
    total = sum(w.values())
    for name, share in shares(populate(w, M), sorted(w)).items():
        # The weight-1 real has only ~65 slots: allow a couple of slots of rounding.
        assert abs(share * M - w[name] / total * M) <= 2, (name, share)


def test_removing_one_of_ten_moves_little() -> None:
    before = owners({n: 1 for n in REALS}, M)
    for gone in REALS:
        after = owners({n: 1 for n in REALS if n != gone}, M)
        moved = sum(a != b for a, b in zip(before, after))
        # The removed real's ~1/N of slots must move; Maglev moves a few more.
        assert moved <= (1 / len(REALS) + 0.02) * M, (gone, moved)
        # Every slot of the removed real went to a survivor, and survivors
        # swapped among themselves at most 2% of the ring.
        churn = sum(a != b and a != gone for a, b in zip(before, after))
        assert churn <= 0.02 * M, (gone, churn)


def test_draining_equals_removing() -> None:
    # Weight 0 takes no turns, so the other reals' permutations are untouched.
    w = {n: 1 for n in REALS}
    w["10.0.0.4"] = 0
    assert owners(w, M) == owners({n: 1 for n in REALS if n != "10.0.0.4"}, M)
    assert "10.0.0.4" not in set(owners(w, M))


def test_input_order_does_not_matter() -> None:
    items = [(n, i % 3 + 1) for i, n in enumerate(REALS)]
    ring = populate(dict(items), 251)
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert populate(dict(items), 251) == ring


def test_deterministic_known_values() -> None:
    w = {"10.0.0.1": 1, "10.0.0.2": 2, "10.0.0.3": 0, "2001:db8::1": 3}
    small = populate(w, 251)
    assert small[:20] == [3, 1, 0, 1, 3, 3, 1, 3, 1, 3, 1, 3, 0, 0, 3, 3, 1, 3, 0, 3]
    big = populate(w, M)
    assert hashlib.sha256(bytes(x + 1 for x in big)).hexdigest() == (
        "3e21fb21ca4eea421c5c865e2725e78f0ba1208f021dd80616780822335ecf2f"
    )
    assert ring_digest(w, M) == 8288446550707989481
    assert ring_digest({}, M) == 4144942681752085491


def test_matches_reference_at_full_size() -> None:
    w = {n: i % 4 + 1 for i, n in enumerate(REALS)}
    assert populate(w, M) == reference(w, M)


def test_all_weights_zero_or_empty() -> None:
    assert populate({"10.0.0.1": 0, "10.0.0.2": 0}, 251) == [-1] * 251
    assert populate({}, 251) == [-1] * 251


def test_ring_digest_depends_on_m_weights_and_set_only() -> None:
    w = {"10.0.0.1": 1, "10.0.0.2": 2}
    assert ring_digest(w, M) == ring_digest(dict(reversed(list(w.items()))), M)
    assert ring_digest(w, M) != ring_digest(w, 251)
    assert ring_digest(w, M) != ring_digest({"10.0.0.1": 1, "10.0.0.2": 3}, M)
    assert ring_digest(w, M) != ring_digest({"10.0.0.1": 1}, M)
    assert 0 <= ring_digest(w, M) < 2**64


IPS = [f"192.0.2.{i}" for i in range(1, 9)] + ["2001:db8::7", "2001:db8::10"]


@settings(max_examples=200, deadline=None)
@given(
    m=st.sampled_from([2, 3, 101, 251, 257]),
    weights=st.dictionaries(st.sampled_from(IPS), st.integers(0, 5), min_size=1, max_size=5),
)
def test_property_every_slot_filled_by_live_reals(m: int, weights: Dict[str, int]) -> None:
    ring = populate(weights, m)
    names = sorted(weights)
    assert len(ring) == m
    if all(w == 0 for w in weights.values()):
        assert ring == [-1] * m
    else:
        assert all(0 <= i < len(names) and weights[names[i]] > 0 for i in ring)
        if m >= 100 * len(names):
            assert {names[i] for i in ring} == {n for n, w in weights.items() if w > 0}
    assert ring == reference(weights, m)


# -- the shortcut for the last turns, and the ring cache -----------------------------


@settings(max_examples=100, deadline=None)
@given(
    m=st.sampled_from([2, 3, 101, 251, 257, 1009]),
    weights=st.dictionaries(st.sampled_from(IPS), st.integers(0, 7), min_size=1, max_size=10),
    divisor=st.sampled_from([1, 2, 16, 10**9]),
)
def test_property_tail_shortcut_changes_nothing(
    m: int, weights: Dict[str, int], divisor: int
) -> None:
    # divisor 1: the shortcut fills up to 1/n of the table; 10**9: it never runs.
    old = maglev.TAIL_DIVISOR
    maglev.TAIL_DIVISOR = divisor
    try:
        assert populate(weights, m) == reference(weights, m)
    finally:
        maglev.TAIL_DIVISOR = old


def test_tail_shortcut_at_full_size_with_many_reals() -> None:
    w = {f"10.1.{i // 200}.{i % 200}": i % 5 for i in range(120)}
    assert populate(w, 16381) == reference(w, 16381)


def test_populate_cached_equals_populate_and_is_bounded() -> None:
    maglev.clear_cache()
    for k in range(maglev.RING_CACHE_SIZE + 3):
        w = {n: 1 for n in REALS}
        w[REALS[0]] = k + 1
        got = maglev.populate_cached(w, 251)
        assert list(got) == populate(w, 251)
        assert maglev.populate_cached(dict(reversed(list(w.items()))), 251) is got  # a hit
    assert len(maglev._rings) == maglev.RING_CACHE_SIZE


def test_populate_cached_never_serves_another_input() -> None:
    maglev.clear_cache()
    w = {n: 1 for n in REALS}
    first = list(maglev.populate_cached(w, 251))
    for changed in (
        {**w, REALS[0]: 2},  # a weight
        {n: 1 for n in REALS[1:]},  # a real fewer
        {**w, "10.0.0.99": 1},  # a real more
        {**w, REALS[3]: 0},  # drained
    ):
        assert list(maglev.populate_cached(changed, 251)) == populate(changed, 251)
    assert list(maglev.populate_cached(w, 257)) == populate(w, 257)  # another m
    assert list(maglev.populate_cached(w, 251)) == first
    assert list(maglev.populate_cached({n: 0 for n in REALS}, 251)) == [-1] * 251


def test_ring_text_digest_matches_ring_digest() -> None:
    w = {"10.0.0.2": 3, "10.0.0.10": 1, "2001:db8::1": 0}
    text = maglev.ring_text(w.items())
    assert maglev.text_digest(text, M) == ring_digest(w, M)
    assert text == maglev.ring_text(reversed(list(w.items())))
