"""Per-VIP and per-real totals from counters that only grow.

The data plane counts a forwarded packet on its real alone (backend_stats,
one slot per backend id), and a packet dropped for want of a real on its VIP
(vip_stats). The control plane never zeroes a backend slot's counters: tx is
their sum. Two maps that only the control plane writes say whose counts are
whose:

* real_ledger, per slot: the VIP that owns it, its state, and the slot's
  counters when the real took it (`base`) and when it left (`final`);
* vip_ledger, per VIP: the counts of reals that have left it (`departed`)
  and a generation that changes with them.

A VIP's total is its drops, plus `departed`, plus each of its reals' counts
since it joined. A real leaves in three writes, each of one record: retire
(freeze `final`, note the VIP's generation), fold (add it to `departed`,
bump the generation), free. A retired real counts only while its VIP is
still at the generation it noted, so before the fold it counts in its own
record and after it in `departed`. Readers read the generations first and
last and read again if one changed (a seqlock), so no fold shows twice or
not at all. A daemon killed between two of the writes finishes them at its
next start (`repair`).

Everything here is pure; xdplbd/dataplane.py does the map I/O.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

Counter = Tuple[int, int]  # packets, bytes

REAL_LEDGER = struct.Struct("<IIQQQQI4x")  # vip_id, state, base p/b, final p/b, retire_gen
VIP_LEDGER = struct.Struct("<QQI4x")  # departed p/b, generation
FREE, ACTIVE, RETIRED = 0, 1, 2
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RealEntry:
    vip_id: int = 0
    state: int = FREE
    base: Counter = (0, 0)
    final: Counter = (0, 0)
    retire_gen: int = 0

    def pack(self) -> bytes:
        return REAL_LEDGER.pack(self.vip_id, self.state, *self.base, *self.final,
                                self.retire_gen)


@dataclass(frozen=True)
class VipEntry:
    departed: Counter = (0, 0)
    generation: int = 0

    def pack(self) -> bytes:
        return VIP_LEDGER.pack(*self.departed, self.generation)


def real_entry(raw: Optional[bytes]) -> RealEntry:
    if not raw:
        return RealEntry()
    vip_id, state, bp, bb, fp, fb, gen = REAL_LEDGER.unpack_from(raw)
    return RealEntry(vip_id, state, (bp, bb), (fp, fb), gen)


_WORDS_PER_RECORD = REAL_LEDGER.size // 4  # the state is word 1 of each record


def entries_in_use(raw: bytes) -> Dict[int, RealEntry]:
    """The records of a whole real_ledger (concatenated) that are not free, by
    slot. Most slots are free: their state words are scanned in one pass."""
    words = array("I")
    words.frombytes(raw[: len(raw) - len(raw) % REAL_LEDGER.size])
    size = REAL_LEDGER.size
    return {slot: real_entry(raw[slot * size: (slot + 1) * size])
            for slot, state in enumerate(words[1::_WORDS_PER_RECORD]) if state != FREE}


def vip_entry(raw: Optional[bytes]) -> VipEntry:
    if not raw:
        return VipEntry()
    dp, db, gen = VIP_LEDGER.unpack_from(raw)
    return VipEntry((dp, db), gen)


def _sub(a: Counter, b: Counter) -> Counter:
    return a[0] - b[0], a[1] - b[1]


def _add(a: Counter, b: Counter) -> Counter:
    return a[0] + b[0], a[1] + b[1]


# --- transitions -----------------------------------------------------------------


def join(vip_id: int, stats: Counter) -> RealEntry:
    """A real takes a slot whose counters read `stats`."""
    return RealEntry(vip_id, ACTIVE, stats, stats)


def retire(entry: RealEntry, stats: Counter, vip: VipEntry) -> RealEntry:
    """The real has left; its count is frozen at `stats`."""
    return replace(entry, state=RETIRED, final=stats, retire_gen=vip.generation)


def fold(vip: VipEntry, entry: RealEntry) -> VipEntry:
    """Add a retired real's count to its VIP's `departed`."""
    return VipEntry(_add(vip.departed, _sub(entry.final, entry.base)),
                    (vip.generation + 1) & _U32)


def free(entry: RealEntry) -> RealEntry:
    """The slot is free; its counters read `final`, the next real's base."""
    return RealEntry(base=entry.final, final=entry.final)


def reset(vip: VipEntry) -> VipEntry:
    """A VIP id is freed: the next VIP to take it starts from nothing."""
    return VipEntry(generation=(vip.generation + 1) & _U32)


# --- reading ---------------------------------------------------------------------


def real_count(entry: RealEntry, stats: Counter) -> Counter:
    """A real's count since it took its slot."""
    if entry.state == ACTIVE:
        return _sub(stats, entry.base)
    return (0, 0)


def vip_counts(
    reals: Mapping[int, RealEntry], stats: Mapping[int, Counter], vips: Sequence[VipEntry],
    drops: Sequence[Counter],
) -> List[Counter]:
    """Every VIP id's total: drops + departed + its reals' counts since they joined.

    `reals` (the records in use) and `stats` are by slot; `vips` and `drops`
    by VIP id."""
    totals = [_add(d, v.departed) for d, v in zip(drops, vips)]
    for slot, e in reals.items():
        if e.state == FREE or e.vip_id >= len(totals):
            continue
        if e.state == ACTIVE:
            part = _sub(stats[slot], e.base)
        elif vips[e.vip_id].generation != e.retire_gen:
            continue  # folded into departed; not yet freed
        else:
            part = _sub(e.final, e.base)
        totals[e.vip_id] = _add(totals[e.vip_id], part)
    return totals


def generations(vips: Sequence[VipEntry]) -> List[int]:
    return [v.generation for v in vips]


# --- repair ----------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """Writes that bring the ledger in line with the backends after a restart."""
    reals: Dict[int, RealEntry]
    vips: Dict[int, VipEntry]


def repair(
    reals: Mapping[int, RealEntry], vips: Sequence[VipEntry], active: Mapping[int, int],
    live_vips: Set[int], stats: Mapping[int, Counter],
) -> Repair:
    """`reals` are the records in use, by slot; `active` maps each backend slot
    that holds a real to its VIP id; `live_vips` are the VIP ids in use;
    `stats` has the counters of every slot in `reals` or `active`.

    * a real that left (a daemon killed mid-removal, or a slot that holds no
      real any more) is folded into its VIP, unless the fold is in or the VIP
      is gone, and its slot freed;
    * a real without an active entry (pins from a build without the ledger)
      joins at its current count: its VIP's total goes on from the VIP
      counter, which that build counted every packet in."""
    new_reals: Dict[int, RealEntry] = {}
    new_vips: Dict[int, VipEntry] = {}

    def vip_of(vid: int) -> VipEntry:
        return new_vips.get(vid, vips[vid])

    for slot in sorted(set(reals) | set(active)):
        e = reals.get(slot, RealEntry())
        owner = active.get(slot)
        if e.state == ACTIVE and owner == e.vip_id:
            continue
        if e.state != FREE:
            alive = e.vip_id in live_vips and e.vip_id < len(vips)
            if e.state == ACTIVE:
                e = retire(e, stats[slot], vip_of(e.vip_id) if alive else VipEntry())
            if alive and vip_of(e.vip_id).generation == e.retire_gen:
                new_vips[e.vip_id] = fold(vip_of(e.vip_id), e)
            e = free(e)
            new_reals[slot] = e
        if owner is not None:
            new_reals[slot] = join(owner, stats[slot])
    return Repair(new_reals, new_vips)
