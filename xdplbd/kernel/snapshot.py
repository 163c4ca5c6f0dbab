"""One reading of every counter in the pinned maps, for `top`, `stats` and /metrics.

Thin: reads the maps through libbpf (libbpf via ctypes, never bcc) with batch
lookups, so a whole reading costs a few milliseconds plus the conntrack scan.

"Flows" are conntrack entries, counted per real (xdplbd/conntrack.py):
  - a UDP entry counts while it is younger than the UDP idle timeout, exactly
    the entries the data plane would still follow;
  - a TCP entry counts until a new flow takes its way in the bucket, so for
    TCP this is the number of *tracked* flows, an upper bound on open
    connections (closed connections stay tracked until replaced).
Entries store a backend id, not a VIP: an entry of a removed real is not
counted, but one whose backend slot was reused by a new real counts for the
new real until it is replaced (the data plane re-hashes it, since the flow's
VIP differs, or follows it, if the VIP is the same).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import AbstractSet, Any, Dict, Optional, Tuple

from xdplbd.core import conntrack
from xdplbd.core.model import LiveState, Tunables, VipKey
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import DataPlane

SCAN_CHUNK = 8192  # conntrack buckets per batch lookup


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
    for spec, field, per_entry in (("vips", "max_vips", 1), ("backends", "max_reals", 1),
                                   ("conntrack", "conntrack_size", conntrack.WAYS)):
        fd = libbpf.obj_get(os.path.join(pin_dir, spec))
        try:
            sizes[field] = libbpf.map_info(fd).max_entries * per_entry
        finally:
            os.close(fd)
    return Tunables(**sizes)


def open_pinned(pin_dir: str, state: Dict[str, Any]) -> DataPlane:
    """Handles on every pinned map; FileNotFoundError if nothing is pinned there."""
    if not os.path.exists(os.path.join(pin_dir, "vips")):
        raise FileNotFoundError(f"no data plane pinned under {pin_dir}")
    return DataPlane(pin_dir, live_tunables(pin_dir, state))


# --- conntrack scan ------------------------------------------------------------


@dataclass(frozen=True)
class FlowScan:
    """Live conntrack entries per backend id, from one walk of the table."""

    counts: Dict[int, int]
    entries: int  # every entry in the table, stale and idle ones included
    monotonic: float  # when the walk ended
    ms: float  # what it cost


def count_flows(m: libbpf.Map, udp_backends: AbstractSet[int], udp_timeout_ticks: int,
                now_tick: int) -> FlowScan:
    """Walk conntrack once and count the entries the data plane would still follow.

    A UDP entry (its backend serves a UDP VIP) idle past `udp_timeout_ticks` is
    not counted. The table is an array, so the walk reads every bucket, used or
    not: about 8 MB and a few tens of ms per million entries.
    """
    t0 = time.monotonic()
    if m.read_size != conntrack.BUCKET.size:
        raise ValueError(f"map {m.name}: value size {m.read_size}, "
                         f"expected {conntrack.BUCKET.size}")
    counts: Counter[int] = Counter()
    total = 0
    for _keys, values, _n in m.batches(SCAN_CHUNK):
        c, used = conntrack.count_live(values, udp_backends, udp_timeout_ticks, now_tick)
        counts.update(c)
        total += used
    t1 = time.monotonic()
    return FlowScan(dict(counts), total, t1, (t1 - t0) * 1000)


def scan_flows(dp: DataPlane, live: Optional[LiveState] = None) -> FlowScan:
    """Count the live flows; `live` saves re-reading the maps when the caller has it."""
    now, udp_limit = dp.ct_time()
    vips = (live or dp.read_live()).vips
    udp = {b.id for v in vips if v.key.proto == "udp" for b in v.backends}
    return count_flows(dp.maps["conntrack"], udp, udp_limit, now)


# --- the snapshot ----------------------------------------------------------------


def take(dp: DataPlane, flows: Optional[FlowScan] = None, scan: bool = False) -> Snapshot:
    """Read every counter once. Flow counts come from `flows`, or from a fresh
    conntrack walk if `scan`; otherwise they are left out (None)."""
    t0 = time.monotonic()
    live = dp.read_live()
    if scan:
        flows = scan_flows(dp, live)
    c = dp.counters()
    counts = flows.counts if flows is not None else None
    vips = []
    for v in live.vips:
        reals = tuple(
            RealSnap(
                b.id, str(b.ip), b.mac, b.weight, *c.reals.get(b.id, (0, 0)),
                flows=None if counts is None else counts.get(b.id, 0),
            )
            for b in v.backends
        )
        vips.append(VipSnap(v.key, v.id, *c.vips[v.id], reals=reals))
    t1 = time.monotonic()
    return Snapshot(t1, time.time(), c.outcomes, tuple(vips),
                    flows.entries if flows is not None else None,
                    dp.maps["conntrack"].info.max_entries * conntrack.WAYS, (t1 - t0) * 1000)


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
