"""One reading of every counter in the pinned maps, for `top`, `stats` and /metrics.

Thin: reads the maps through bpfsys (libbpf via ctypes, never bcc) with batch
lookups, so a whole reading costs a few milliseconds plus the conntrack scan.

"Flows" are conntrack entries, counted per real. The data plane stamps
`last_seen_ns` on UDP entries only (a write per TCP packet would cost too
much), so:
  - a UDP entry counts while it is younger than the UDP idle timeout, exactly
    the entries the data plane would still follow;
  - a TCP entry counts until the LRU table evicts it, so for TCP this is the
    number of *tracked* flows, an upper bound on open connections (closed
    connections stay tracked until evicted).
Entries that point at a removed real, or at a real of another VIP, are not
counted: the data plane re-hashes them on their next packet.
"""

from __future__ import annotations

import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import bpfsys, schema
from .dataplane import DataPlane
from .model import Tunables, VipKey

IPPROTO_UDP = 17
PROTO_OFFSET = 36  # of `proto` in struct flow_key
SCAN_CHUNK = 8192  # conntrack entries per batch lookup


@dataclass(frozen=True)
class RealSnap:
    backend_id: int
    ip: str
    mac: str
    weight: int
    packets: int
    bytes: int
    flows: Optional[int]  # None when flows were not counted

    @property
    def state(self) -> str:
        return "active" if self.weight else "draining"


@dataclass(frozen=True)
class VipSnap:
    key: VipKey
    vip_id: int
    packets: int
    bytes: int
    reals: Tuple[RealSnap, ...]

    @property
    def flows(self) -> Optional[int]:
        if any(r.flows is None for r in self.reals):
            return None
        return sum(r.flows or 0 for r in self.reals)


@dataclass(frozen=True)
class Snapshot:
    monotonic: float  # time.monotonic() when taken: rates divide by its differences
    wall: float  # time.time() when taken
    outcomes: Dict[str, Tuple[int, int]]  # name -> (packets, bytes), summed across CPUs
    vips: Tuple[VipSnap, ...]
    conntrack_entries: Optional[int]  # None when the table was not scanned
    conntrack_max: int
    read_ms: float  # what this reading cost, a conntrack walk included


# --- opening the pins read-only, whoever made them ------------------------------------

def live_tunables(pin_dir: str, state: Dict[str, Any]) -> Tunables:
    """The tunables in force: state.toml's, else the map sizes read from the pins.

    Without state.toml the ring size is unknown (it only shapes the inner rings);
    `xdplb explain` infers it from a ring's contents instead.
    """
    if isinstance(state.get("tunables"), dict):
        try:
            return Tunables(**state["tunables"])
        except TypeError:
            pass  # written by another version: fall back to the pins
    sizes = {}
    for spec, field in (("vips", "max_vips"), ("backends", "max_reals"),
                        ("conntrack", "conntrack_size")):
        fd = bpfsys.obj_get(os.path.join(pin_dir, spec))
        try:
            sizes[field] = bpfsys.map_info(fd).max_entries
        finally:
            os.close(fd)
    return Tunables(**sizes)


def open_pinned(pin_dir: str, state: Dict[str, Any]) -> DataPlane:
    """Handles on every pinned map; FileNotFoundError if nothing is pinned there."""
    if not os.path.exists(os.path.join(pin_dir, "vips")):
        raise FileNotFoundError(f"no data plane pinned under {pin_dir}")
    return DataPlane(pin_dir, live_tunables(pin_dir, state))


# --- conntrack scan ------------------------------------------------------------


def hash_batches(m: bpfsys.Map, chunk: int = SCAN_CHUNK) -> Iterator[Tuple[bytes, bytes, int]]:
    """(keys, values, n) chunks of a (non per-CPU) hash map (bpfsys.Map.batches)."""
    return m.batches(chunk)


@dataclass(frozen=True)
class FlowScan:
    """Live conntrack entries per (vip_id, backend_id), from one walk of the table."""

    counts: Dict[Tuple[int, int], int]
    entries: int  # every entry in the table, stale and idle ones included
    monotonic: float  # when the walk ended
    ms: float  # what it cost


def count_flows(m: bpfsys.Map, udp_timeout_ns: int, now_ns: Optional[int] = None) -> FlowScan:
    """Walk conntrack once and count the entries the data plane would still follow.

    A UDP entry idle longer than `udp_timeout_ns` is not counted (bpf_ktime_get_ns
    and time.monotonic_ns both read CLOCK_MONOTONIC). Costs about 0.4 us an entry
    (a full 1M-entry table: ~0.4 s), plus ~13 ms per million buckets even when empty.
    """
    t0 = time.monotonic()
    counts: Counter[Tuple[int, int]] = Counter()
    total = 0
    ks, vs = m.info.key_size, m.read_size
    if vs != schema.CT_ENTRY.size:
        raise ValueError(f"map {m.name}: value size {vs}, expected {schema.CT_ENTRY.size}")
    for keys, values, n in hash_batches(m):
        total += n
        if now_ns is None:
            now_ns = time.monotonic_ns()
        words = array("I")
        words.frombytes(values)
        bids, vids = words[0::4], words[1::4]
        protos = keys[PROTO_OFFSET::ks]
        if udp_timeout_ns and IPPROTO_UDP in protos:
            stamps = array("Q")
            stamps.frombytes(values)
            cutoff = now_ns - udp_timeout_ns
            counts.update(
                (v, b) for v, b, p, t in zip(vids, bids, protos, stamps[1::2])
                if p != IPPROTO_UDP or t >= cutoff
            )
        else:
            counts.update(zip(vids, bids))
    t1 = time.monotonic()
    return FlowScan(dict(counts), total, t1, (t1 - t0) * 1000)


def scan_flows(dp: DataPlane) -> FlowScan:
    _mac, udp_timeout_ns = dp.settings()
    return count_flows(dp.maps["conntrack"], udp_timeout_ns)


# --- the snapshot ----------------------------------------------------------------


def _sum_all(dp: DataPlane, name: str) -> List[Tuple[int, int]]:
    m = dp.maps[name]
    return [schema.sum_counters(raw, m.ncpu) if raw else (0, 0) for raw in m.lookup_array_all()]


def take(dp: DataPlane, flows: Optional[FlowScan] = None, scan: bool = False) -> Snapshot:
    """Read every counter once. Flow counts come from `flows`, or from a fresh
    conntrack walk if `scan`; otherwise they are left out (None)."""
    t0 = time.monotonic()
    if scan:
        flows = scan_flows(dp)
    live = dp.read_live()
    vip_c = _sum_all(dp, "vip_stats")
    be_c = _sum_all(dp, "backend_stats")
    out_c = _sum_all(dp, "outcomes")
    counts = flows.counts if flows is not None else None
    vips = []
    for v in live.vips:
        reals = tuple(
            RealSnap(
                b.id, str(b.ip), b.mac, b.weight, *be_c[b.id],
                flows=None if counts is None else counts.get((v.id, b.id), 0),
            )
            for b in v.backends
        )
        vips.append(VipSnap(v.key, v.id, *vip_c[v.id], reals=reals))
    outcomes = {name: out_c[i] for i, name in enumerate(schema.OUTCOMES)}
    t1 = time.monotonic()
    return Snapshot(t1, time.time(), outcomes, tuple(vips),
                    flows.entries if flows is not None else None,
                    dp.maps["conntrack"].info.max_entries, (t1 - t0) * 1000)


def stats_json(snap: Snapshot) -> Dict[str, Any]:
    """`xdplb stats --json` (docs/operating.md, "stats --json")."""
    return {
        "schema": 1,
        "time": round(snap.wall, 3),
        "outcomes": {k: {"packets": p, "bytes": b} for k, (p, b) in snap.outcomes.items()},
        "vips": [
            {
                "vip": str(v.key.addr), "port": v.key.port, "protocol": v.key.proto,
                "vip_id": v.vip_id, "packets": v.packets, "bytes": v.bytes,
                "reals": [{"ip": r.ip, "backend_id": r.backend_id, "packets": r.packets,
                           "bytes": r.bytes} for r in v.reals],
            }
            for v in snap.vips
        ],
    }
