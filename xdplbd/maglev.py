"""Weighted Maglev lookup tables (Eisenbud et al., NSDI'16, section 3.4).

A ring is a pure function of the reals' identities (canonical IP text), their
weights and the table size m, so every LB node and every restart builds the
same one, whatever the order of the reals in the config file.
"""

from __future__ import annotations

import hashlib
from typing import List, Mapping, Tuple


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
    """
    if m < 2:
        raise ValueError(f"ring size must be a prime >= 2, got {m}")
    names = sorted(weights)
    ws = [weights[n] for n in names]
    entry = [-1] * m
    if not any(w > 0 for w in ws):
        return entry
    # pos[i] is the next slot in real i's permutation: offset + j*skip (mod m).
    pos: List[int] = []
    skip: List[int] = []
    for n in names:
        o, s = _offset_skip(n, m)
        pos.append(o)
        skip.append(s)
    cycle = _turn_cycle(ws)
    filled = 0
    # Hot loop: m turns, ~m*ln(m) probes in total. Locals only, and stepping
    # by addition instead of recomputing (offset + j*skip) % m.
    while True:
        for i in cycle:
            c = pos[i]
            s = skip[i]
            while entry[c] >= 0:
                c += s
                if c >= m:
                    c -= m
            entry[c] = i
            c += s
            if c >= m:
                c -= m
            pos[i] = c
            filled += 1
            if filled == m:
                return entry


def ring_digest(weights: Mapping[str, int], m: int) -> int:
    """A u64 naming a ring: sha256 over m and the sorted (identity, weight) pairs."""
    h = hashlib.sha256(f"maglev-v1 {m}\n".encode())
    for name in sorted(weights):
        h.update(f"{name} {weights[name]}\n".encode())
    return int.from_bytes(h.digest()[:8], "big")
