"""The connection table's layout (bpf/xdplb.c, struct ct_bucket). Pure.

The table is an array of buckets of WAYS entries; a flow's bucket comes from
the high half of its 64-bit flow hash. Each entry is one u64, so the data
plane reads and writes it whole, without locks:

    bits  0-31  tag: the low half of the flow hash, with bit 0 set (0 = empty)
    bits 32-47  backend id
    bits 48-63  last seen, in ticks of 2**tick_shift jiffies (about a second;
                see Clock), mod 2**16

An entry stores no 5-tuple: a flow matches it when its bucket and tag agree,
32 + log2(buckets) bits of hash. The protocol comes from the backend's VIP.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import AbstractSet, Optional, Sequence, Tuple

from xdplbd.core.flowhash import flow_hash

WAYS = 8
TAG_MASK = 0xFFFFFFFF
ID_SHIFT, ID_MASK = 32, 0xFFFF
SEEN_SHIFT = 48
TICK_MASK = 0xFFFF
NS_PER_S = 1_000_000_000
BUCKET = struct.Struct(("<" if sys.byteorder == "little" else ">") + f"{WAYS}Q")  # 64 bytes


@dataclass(frozen=True)
class Entry:
    tag: int
    backend_id: int
    tick: int  # when last seen


def buckets(conntrack_size: int) -> int:
    """Buckets for a table of `conntrack_size` entries (rounded up to whole buckets)."""
    return (conntrack_size + WAYS - 1) // WAYS


def bucket_of(hash64: int, n_buckets: int) -> int:
    return ((hash64 >> 32) * n_buckets) >> 32


def tag_of(hash64: int) -> int:
    return (hash64 & TAG_MASK) | 1


def locate(flow_key: bytes, n_buckets: int) -> Tuple[int, int]:
    """(bucket, tag) of a packed flow key."""
    h = flow_hash(flow_key)
    return bucket_of(h, n_buckets), tag_of(h)


def encode(e: Entry) -> int:
    return e.tag | (e.backend_id << ID_SHIFT) | ((e.tick & TICK_MASK) << SEEN_SHIFT)


def decode(word: int) -> Optional[Entry]:
    if not word:
        return None
    return Entry(word & TAG_MASK, (word >> ID_SHIFT) & ID_MASK, word >> SEEN_SHIFT)


def find(ways: Sequence[int], tag: int) -> Optional[int]:
    """ct_find(): the way whose entry carries `tag`, if any."""
    for i, w in enumerate(ways):
        if w & TAG_MASK == tag:
            return i
    return None


def free_way(ways: Sequence[int], tag: int) -> int:
    """Where a writer puts a flow's entry: its own way, else an empty one, else way 0."""
    own = find(ways, tag)
    if own is not None:
        return own
    return next((i for i, w in enumerate(ways) if not w), 0)


@dataclass(frozen=True)
class Clock:
    """The data plane's conntrack clock, as lb_settings describes it.

    A tick is 2**tick_shift jiffies: the data plane computes it with one
    inlined load and a shift. jiffies = (CLOCK_MONOTONIC_COARSE + offset_ns)
    // jiffy_ns (xdplbd/clock.py measures the two), so tools read the same
    clock without the data plane."""
    jiffy_ns: int
    offset_ns: int
    tick_shift: int

    @property
    def tick_ns(self) -> int:
        return self.jiffy_ns << self.tick_shift

    def tick_at(self, coarse_ns: int) -> int:
        """The tick at a CLOCK_MONOTONIC_COARSE reading."""
        jiffies = ((coarse_ns + self.offset_ns) % 2**64) // self.jiffy_ns
        return (jiffies >> self.tick_shift) & TICK_MASK

    def timeout_ticks(self, udp_timeout_ns: int) -> int:
        """The data plane's UDP idle limit: an entry older than this many ticks is stale."""
        return udp_timeout_ns // self.tick_ns


def tick_shift_for(jiffy_ns: int) -> int:
    """The shift that makes a tick the fewest power-of-two jiffies that last a
    second or more: 1.024 s at HZ=1000 and 250, 1.28 s at 100, 1.71 s at 300.
    2**16 ticks then last at least 18.2 h, so no UDP timeout (18 h at most)
    outlasts the wrap of an entry's timestamp."""
    shift = 0
    while jiffy_ns << shift < NS_PER_S:
        shift += 1
    return shift


def age(tick: int, now: int) -> int:
    return (now - tick) & TICK_MASK


def expired(e: Entry, now: int, limit_ticks: int) -> bool:
    return age(e.tick, now) > limit_ticks


def count_live(values: bytes, udp_backends: AbstractSet[int], limit_ticks: int,
               now: int) -> Tuple[Counter[int], int]:
    """Entries per backend id that the data plane would still follow, and all
    non-empty entries, in a run of packed buckets. A UDP entry (its backend
    serves a UDP VIP) counts while it is not idle past the timeout."""
    words = array("Q")
    words.frombytes(values[: len(values) - len(values) % 8])  # native order, as written
    used = [w for w in words if w]
    counts: Counter[int] = Counter()
    for w in used:
        bid = (w >> ID_SHIFT) & ID_MASK
        if bid in udp_backends and age(w >> SEEN_SHIFT, now) > limit_ticks:
            continue
        counts[bid] += 1
    return counts, len(used)
