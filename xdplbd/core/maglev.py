"""Weighted Maglev lookup tables (Eisenbud et al., NSDI'16, section 3.4).

A ring is a pure function of the reals' identities (canonical IP text), their
weights and the table size m, so every LB node and every restart builds the
same one, whatever the order of the reals in the config file.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from itertools import cycle, islice
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

# Probing stops once fewer than m // (TAIL_DIVISOR * reals) slots are left empty;
# the rest is filled from per-real lists of those slots (same result, see populate).
TAIL_DIVISOR = 16
RING_CACHE_SIZE = 8  # rings kept by populate_cached (2 bytes a slot each)


def _offset_skip(identity: str, m: int) -> Tuple[int, int]:
    # A stable hash (never Python's salted hash()): two 64-bit halves of sha256.
    h = hashlib.sha256(identity.encode("utf-8")).digest()
    h1 = int.from_bytes(h[0:8], "big")
    h2 = int.from_bytes(h[8:16], "big")
    return h1 % m, h2 % (m - 1) + 1


def _turn_cycle(weights: List[int]) -> List[int]:
    """The order in which reals take turns, for one period of rounds.

    Real i takes a turn in round r when floor((r+1)*w_i/w_max) > floor(r*w_i/w_max),
    so after R rounds it has taken floor(R*w_i/w_max) turns: its share of slots is
    w_i/sum(w) to within one turn. Within a round, lower indices go first. The
    pattern repeats every w_max rounds, so one period is precomputed and cycled.
    """
    w_max = max(weights)
    rounds: List[List[int]] = [[] for _ in range(w_max)]
    for i, w in enumerate(weights):
        if w <= 0:
            continue
        # The k-th turn (k = 1..w) falls in round ceil(k*w_max/w) - 1.
        for k in range(1, w + 1):
            rounds[-(-k * w_max // w) - 1].append(i)
    return [i for r in rounds for i in r]


def populate(weights: Mapping[str, int], m: int) -> List[int]:
    """Build a Maglev table of size m (a prime).

    Slot values are indices into sorted(weights); reals of weight 0 get no slot.
    If no real has a positive weight, every slot is -1.

    Each turn fills exactly one slot, so the table is full after exactly m turns.
    A turn walks the real's permutation (offset + j*skip mod m) to its next empty
    slot. That walk gets long once the table is nearly full, so the last few
    turns take a shortcut with the same outcome: the slots still empty are listed
    once per real in the order its walk would reach them (j = (slot - here) /
    skip mod m, skip being invertible as m is prime), and a turn takes the first
    one of its list that is still empty.
    """
    if m < 2:
        raise ValueError(f"ring size must be a prime >= 2, got {m}")
    names = sorted(weights)
    ws = [weights[n] for n in names]
    if not any(w > 0 for w in ws):
        return [-1] * m
    entry: List[Optional[int]] = [None] * m
    # pos[i] is the next slot in real i's permutation: offset + j*skip (mod m).
    pos: List[int] = []
    skip: List[int] = []
    for n in names:
        o, s = _offset_skip(n, m)
        pos.append(o)
        skip.append(s)
    order = _turn_cycle(ws)
    active = sorted(set(order))
    tail = m // (TAIL_DIVISOR * len(active))
    turns = cycle(order)
    # Hot loop: locals only, stepping by addition instead of (offset + j*skip) % m.
    for i in islice(turns, m - tail):
        c = pos[i]
        s = skip[i]
        while entry[c] is not None:
            c += s
            if c >= m:
                c -= m
        entry[c] = i
        c += s
        if c >= m:
            c -= m
        pos[i] = c
    if tail:
        empty: List[int] = []
        c = -1
        for _ in range(tail):
            c = entry.index(None, c + 1)
            empty.append(c)
        bits = m.bit_length()
        mask = (1 << bits) - 1
        walks: Dict[int, Iterator[int]] = {}
        for i in active:
            here, inv = pos[i], pow(skip[i], -1, m)
            # (steps from here) << bits | slot: sorting orders the slots by steps.
            keyed = sorted([((e - here) * inv % m) << bits | e for e in empty])
            walks[i] = iter([k & mask for k in keyed])
        for i in islice(turns, tail):
            walk = walks[i]
            c = next(walk)
            while entry[c] is not None:
                c = next(walk)
            entry[c] = i
    return cast(List[int], entry)  # m turns filled every slot


_rings: OrderedDict[Tuple[Tuple[Tuple[str, int], ...], int], Sequence[int]] = OrderedDict()


def populate_cached(weights: Mapping[str, int], m: int) -> Sequence[int]:
    """populate(), remembering the last RING_CACHE_SIZE tables (read-only result).

    A ring is a pure function of (sorted (identity, weight) pairs, m), which is
    the key; a weight flapping back and forth (a health check, a drain undone)
    then costs no rebuild. Each table is kept as 2-byte slots.
    """
    key = (tuple(sorted(weights.items())), m)
    hit = _rings.get(key)
    if hit is not None:
        _rings.move_to_end(key)
        return hit
    table = populate(weights, m)
    stored: Sequence[int] = tuple(table)
    if table[0] >= 0 and len(weights) <= 0xFFFF:
        stored = array("H", table)
    _rings[key] = stored
    while len(_rings) > RING_CACHE_SIZE:
        _rings.popitem(last=False)
    return stored


def clear_cache() -> None:
    _rings.clear()


def ring_text(pairs: Iterable[Tuple[str, int]]) -> str:
    """The canonical (identity, weight) lines that name a ring (ring_digest's input)."""
    return "".join(f"{name} {w}\n" for name, w in sorted(pairs))


def text_digest(text: str, m: int) -> int:
    """ring_digest() of the reals that ring_text() gave `text`."""
    h = hashlib.sha256(f"maglev-v1 {m}\n".encode())
    h.update(text.encode())
    return int.from_bytes(h.digest()[:8], "big")


def ring_digest(weights: Mapping[str, int], m: int) -> int:
    """A u64 naming a ring: sha256 over m and the sorted (identity, weight) pairs."""
    return text_digest(ring_text(weights.items()), m)
