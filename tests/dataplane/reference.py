"""A reference model of the data plane's contract, written from docs/dataplane.md.

It is a test oracle, not product code: plain Python, one frame at a time,
written for clarity over speed. The differential test (test_differential.py)
feeds it and bpf/xdplb.c the same maps and frames and asks for the same
verdict, output bytes, chosen real, connection table and counters.

What it takes from the project, and why: the flow hash (xdplbd/core/flowhash.py,
which docs/dataplane.md names as the definition of `flow_hash`) and the
connection table's entry layout, which the spec gives bit by bit (re-stated
here, not imported). Everything else (parsing, the VIP match, the table's
replacement rule, the ring slot, the MAC filter, ICMP error routing, the
counters) follows the spec's prose.

The model's state is what the maps hold, as the data plane reads them:
VIPs by key, backends by id, one ring per VIP id, the connection table,
the settings and the extra MACs. The control plane's choices (which id a
real gets, what the ring holds) are inputs here, read from the maps; the
control plane has its own tests.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from xdplbd.core.flowhash import flow_hash

TX, PASS, DROP = "tx", "pass", "drop"

ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
MAX_VLAN_TAGS = 2
TCP, UDP, ICMP, ICMPV6, IPV6_FRAGMENT = 6, 17, 1, 58, 44
FAMILY_V4, FAMILY_V6 = 4, 6

# The path counters, in the order of the data plane's `path_stats` map.
PATHS = ("ct_new", "no_real", "icmp_routed", "pass", "fragment", "malformed", "other_mac")

# The connection table entry (docs/dataplane.md, "The connection table").
WAYS = 8
TAG_MASK = 0xFFFFFFFF
ID_SHIFT, ID_MASK = 32, 0xFFFF
SEEN_SHIFT, TICK_MASK = 48, 0xFFFF


@dataclass(frozen=True)
class Backend:
    mac: bytes
    vip_id: int
    active: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # TX, PASS or DROP
    out: bytes  # the frame as the program leaves it
    path: Optional[str]  # the path counter it moved; None for a conntrack hit
    backend: int = 0  # the real's backend id when forwarded


@dataclass
class Model:
    lb_mac: bytes
    tick_shift: int
    udp_timeout_ticks: int
    max_vips: int
    max_reals: int
    ring_size: int
    n_buckets: int
    extra_macs: Tuple[bytes, ...] = ()
    vips: Dict[Tuple[bytes, int, int, int], int] = field(default_factory=dict)
    backends: Dict[int, Backend] = field(default_factory=dict)
    rings: Dict[int, Sequence[int]] = field(default_factory=dict)
    conntrack: array = field(default_factory=lambda: array("Q"))
    paths: List[List[int]] = field(default_factory=list)
    real_stats: Dict[int, List[int]] = field(default_factory=dict)
    vip_stats: Dict[int, List[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.conntrack:
            self.conntrack = array("Q", bytes(8 * WAYS * self.n_buckets))
        if not self.paths:
            self.paths = [[0, 0] for _ in PATHS]

    # --- counters ------------------------------------------------------------

    def _count(self, table: Dict[int, List[int]], key: int, nbytes: int) -> None:
        c = table.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += nbytes

    def _path(self, name: str, nbytes: int) -> None:
        c = self.paths[PATHS.index(name)]
        c[0] += 1
        c[1] += nbytes

    # --- the frame -----------------------------------------------------------

    def run(self, frame: bytes, jiffies: int) -> Verdict:
        """One frame through the data plane; updates the table and counters."""
        n = len(frame)
        parsed = parse(frame)
        kind = parsed[0]
        if kind in ("fragment", "malformed", "pass"):
            self._path(kind, n)
            return Verdict(PASS, frame, kind)
        _kind, flow, syn_only = parsed
        if kind == "icmp":
            return self._icmp_error(frame, flow)
        return self._balance(frame, flow, syn_only, jiffies)

    def _vip_of(self, flow: Tuple[bytes, bytes, int, int, int, int]) -> Optional[int]:
        _src, dst, _sport, dport, proto, family = flow
        return self.vips.get((dst, dport, proto, family))

    def _for_us(self, frame: bytes) -> bool:
        dst = frame[:6]
        return dst == self.lb_mac or dst in self.extra_macs

    def _backend_for(self, backend_id: int, vip_id: int) -> Optional[Backend]:
        """A live backend of this VIP; anything else is stale."""
        b = self.backends.get(backend_id) if backend_id else None
        if b is None or not b.active or b.vip_id != vip_id:
            return None
        return b

    def _ring_pick(self, vip_id: int, h: int) -> int:
        ring = self.rings.get(vip_id)
        if ring is None:
            return 0
        return ring[((h & 0xFFFFFFFF) * self.ring_size) >> 32]

    def _forward(self, frame: bytes, backend_id: int, b: Backend,
                 path: Optional[str]) -> Verdict:
        out = b.mac + self.lb_mac + frame[12:]
        if path is not None:
            self._path(path, len(frame))
        if backend_id < self.max_reals:
            self._count(self.real_stats, backend_id, len(frame))
        return Verdict(TX, out, path, backend_id)

    def _bucket(self, h: int) -> int:
        return (((h >> 32) * self.n_buckets) >> 32) * WAYS

    def _find(self, base: int, tag: int) -> Optional[int]:
        for i in range(WAYS):
            if self.conntrack[base + i] & TAG_MASK == tag:
                return i
        return None

    def _victim(self, base: int, now: int) -> int:
        """An empty way, else the least recently seen (the first of equals)."""
        oldest, victim = 0, 0
        for i in range(WAYS):
            e = self.conntrack[base + i]
            if not e:
                return i
            age = (now - (e >> SEEN_SHIFT)) & TICK_MASK
            if age > oldest:
                oldest, victim = age, i
        return victim

    def _icmp_error(self, frame: bytes, flow: Tuple[bytes, bytes, int, int, int, int]
                    ) -> Verdict:
        n = len(frame)
        vip_id = self._vip_of(flow)
        if vip_id is None:
            self._path("pass", n)
            return Verdict(PASS, frame, "pass")
        if not self._for_us(frame):
            self._path("other_mac", n)
            return Verdict(PASS, frame, "other_mac")
        h = flow_hash(pack_flow(flow))
        base = self._bucket(h)
        way = self._find(base, (h & TAG_MASK) | 1)
        b = None
        if way is not None:
            bid = (self.conntrack[base + way] >> ID_SHIFT) & ID_MASK
            b = self._backend_for(bid, vip_id)
        if b is None:
            bid = self._ring_pick(vip_id, h)
            b = self._backend_for(bid, vip_id)
        if b is None:
            self._path("pass", n)
            return Verdict(PASS, frame, "pass")
        return self._forward(frame, bid, b, "icmp_routed")

    def _balance(self, frame: bytes, flow: Tuple[bytes, bytes, int, int, int, int],
                 syn_only: bool, jiffies: int) -> Verdict:
        n = len(frame)
        vip_id = self._vip_of(flow)
        if vip_id is None:
            self._path("pass", n)
            return Verdict(PASS, frame, "pass")
        if not self._for_us(frame):
            self._path("other_mac", n)
            return Verdict(PASS, frame, "other_mac")
        proto = flow[4]
        h = flow_hash(pack_flow(flow))
        tag = (h & TAG_MASK) | 1
        now = (jiffies >> self.tick_shift) & TICK_MASK
        base = self._bucket(h)
        way = self._find(base, tag)
        if way is not None and not (proto == TCP and syn_only):
            entry = self.conntrack[base + way]
            bid = (entry >> ID_SHIFT) & ID_MASK
            b = self._backend_for(bid, vip_id)
            age = (now - (entry >> SEEN_SHIFT)) & TICK_MASK
            if b is not None and proto == UDP and age > self.udp_timeout_ticks:
                b = None
            if b is not None:
                if entry >> SEEN_SHIFT != now:
                    self.conntrack[base + way] = tag | (bid << ID_SHIFT) | (now << SEEN_SHIFT)
                return self._forward(frame, bid, b, None)
        bid = self._ring_pick(vip_id, h)
        b = self._backend_for(bid, vip_id)
        if b is None:
            if vip_id < self.max_vips:
                self._count(self.vip_stats, vip_id, n)
            self._path("no_real", n)
            return Verdict(DROP, frame, "no_real")
        if way is None:
            way = self._victim(base, now)
        self.conntrack[base + way] = tag | (bid << ID_SHIFT) | (now << SEEN_SHIFT)
        return self._forward(frame, bid, b, "ct_new")


# --- parsing -----------------------------------------------------------------

Flow = Tuple[bytes, bytes, int, int, int, int]  # src16, dst16, sport, dport, proto, family


def pack_flow(flow: Flow) -> bytes:
    """The 40-byte flow key the flow hash reads (docs/dataplane.md, "The flow key")."""
    src, dst, sport, dport, proto, family = flow
    return src + dst + struct.pack(">HH", sport, dport) + bytes((proto, family, 0, 0))


def _u16(b: bytes, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def parse(frame: bytes) -> tuple:
    """("malformed" | "fragment" | "pass",) or ("flow" | "icmp", flow, syn_only)."""
    n = len(frame)
    if n < ETH_HLEN:
        return ("malformed",)
    etype = _u16(frame, 12)
    off = ETH_HLEN
    for _ in range(MAX_VLAN_TAGS):
        if etype not in VLAN_TPIDS:
            break
        if off + 4 > n:
            return ("malformed",)
        etype = _u16(frame, off + 2)
        off += 4
    if etype == ETH_P_IP:
        return _ipv4(frame, off)
    if etype == ETH_P_IPV6:
        return _ipv6(frame, off)
    if etype == 0:  # an 802.3 length of 0: no frame has that
        return ("malformed",)
    return ("pass",)


def _ports(frame: bytes, l4: int, proto: int) -> Optional[tuple]:
    """(sport, dport, syn_only), ("malformed",) or None for another protocol."""
    if proto == TCP:
        if l4 + 20 > len(frame):
            return ("malformed",)
        flags = frame[l4 + 13]
        return (_u16(frame, l4), _u16(frame, l4 + 2), bool(flags & 0x02) and not flags & 0x10)
    if proto == UDP:
        if l4 + 8 > len(frame):
            return ("malformed",)
        return (_u16(frame, l4), _u16(frame, l4 + 2), False)
    return None


def _ipv4_header(frame: bytes, l3: int) -> Optional[int]:
    """The header length, or None if it is not a sound IPv4 header."""
    if l3 + 20 > len(frame):
        return None
    ihl = (frame[l3] & 0x0F) * 4
    if frame[l3] >> 4 != 4 or ihl < 20:
        return None
    return ihl


def _v4(addr: bytes) -> bytes:
    return addr + bytes(12)


def _ipv4(frame: bytes, l3: int) -> tuple:
    ihl = _ipv4_header(frame, l3)
    if ihl is None or l3 + ihl > len(frame):
        return ("malformed",)
    if _u16(frame, l3 + 6) & 0x3FFF:  # MF or a fragment offset
        return ("fragment",)
    proto = frame[l3 + 9]
    src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
    l4 = l3 + ihl
    if proto == ICMP:
        if l4 + 8 > len(frame):
            return ("malformed",)
        if frame[l4] != 3 or frame[l4 + 1] != 4:  # fragmentation needed
            return ("pass",)
        inner = l4 + 8
        iihl = _ipv4_header(frame, inner)
        if iihl is None:
            return ("malformed",)
        iproto = frame[inner + 9]
        if iproto not in (TCP, UDP):
            return ("pass",)
        il4 = inner + iihl
        if il4 + 8 > len(frame):
            return ("malformed",)
        isrc, idst = frame[inner + 12:inner + 16], frame[inner + 16:inner + 20]
        # The quoted packet is the real's reply (VIP -> client): reversed.
        flow = (_v4(idst), _v4(isrc), _u16(frame, il4 + 2), _u16(frame, il4), iproto, FAMILY_V4)
        return ("icmp", flow, False)
    ports = _ports(frame, l4, proto)
    if ports is None:
        return ("pass",)
    if len(ports) == 1:
        return ports
    sport, dport, syn_only = ports
    return ("flow", (_v4(src), _v4(dst), sport, dport, proto, FAMILY_V4), syn_only)


def _ipv6(frame: bytes, l3: int) -> tuple:
    if l3 + 40 > len(frame) or frame[l3] >> 4 != 6:
        return ("malformed",)
    nexthdr = frame[l3 + 6]
    if nexthdr == IPV6_FRAGMENT:
        return ("fragment",)
    src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
    l4 = l3 + 40
    if nexthdr == ICMPV6:
        if l4 + 8 > len(frame):
            return ("malformed",)
        if frame[l4] != 2:  # packet too big
            return ("pass",)
        inner = l4 + 8
        if inner + 48 > len(frame):
            return ("malformed",)
        inext = frame[inner + 6]
        if inext not in (TCP, UDP):
            return ("pass",)
        isrc, idst = frame[inner + 8:inner + 24], frame[inner + 24:inner + 40]
        il4 = inner + 40
        flow = (idst, isrc, _u16(frame, il4 + 2), _u16(frame, il4), inext, FAMILY_V6)
        return ("icmp", flow, False)
    ports = _ports(frame, l4, nexthdr)
    if ports is None:
        return ("pass",)
    if len(ports) == 1:
        return ports
    sport, dport, syn_only = ports
    return ("flow", (src, dst, sport, dport, nexthdr, FAMILY_V6), syn_only)
