"""Typed values shared by the pure core (config, maglev, plan) and the shell.

Everything here is immutable and free of I/O, so it can be compared, hashed
and tested without root. A few derived values that the plan needs on every
reload (the canonical text of a VIP's reals) are computed once per object
(functools.cached_property): the objects are immutable, so they cannot go stale.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Iterable, Optional, Tuple, Union

from xdplbd.core.maglev import ring_text

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTOCOLS = {"tcp": 6, "udp": 17}
XDP_MODES = ("native", "generic", "auto")


@dataclass(frozen=True)
class Tunables:
    """Map sizes and timeouts. Sizes are memory choices (docs/tunables.md)."""

    max_vips: int = 512  # VIP slots (hash + ring outer array)
    max_reals: int = 4096  # backend slots: one per (VIP, real) pair, id 0 reserved
    conntrack_size: int = 4194304  # connection table entries, 8 bytes each (32 MB)
    ring_size: int = 65537  # Maglev M, prime, >= 100 x the largest VIP's reals
    udp_timeout: int = 30  # seconds a UDP flow may idle before it is re-hashed


@dataclass(frozen=True)
class VipKey:
    """A service: address, port and protocol name ("tcp" | "udp")."""

    addr: IPAddress
    port: int
    proto: str

    def __hash__(self) -> int:  # kept by @dataclass; the plan looks keys up a lot
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.addr, self.port, self.proto))

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}/{self.proto}"


HEALTHCHECK_TYPES = ("tcp", "http", "udp", "none")


@dataclass(frozen=True)
class HealthCheck:
    """How a VIP's reals are checked (lb_conf.json "healthcheck"; core/health.py runs it).

    type "none" checks nothing: its reals are "unchecked" and always take flows."""

    type: str = "tcp"  # tcp | http | udp | none
    port: Optional[int] = None  # None: the VIP's port
    dsr: bool = True  # tcp: SYN to VIP:port at the real's MAC; False: connect to the real's IP
    path: str = "/"  # http
    host: Optional[str] = None  # http Host header; None: the real's IP
    expect: Tuple[int, int] = (200, 399)  # http: accepted status codes, inclusive
    send: str = ""  # udp payload: text, or "hex:..." for bytes
    receive: str = ""  # udp: the reply must start with this ("" = any reply)
    interval: float = 2.0  # seconds between checks of one real
    timeout: float = 1.0  # seconds a check may take (< interval)
    rise: int = 2  # consecutive successes that make a down real up
    fall: int = 3  # consecutive failures that make an up real down


@dataclass(frozen=True)
class Real:
    """A real server of one VIP. Its identity is its IP; mac is lowercase a:b:c:d:e:f,
    or None in the config: resolve it from the neighbour table (core/effective.py)."""

    ip: IPAddress
    mac: Optional[str]
    weight: int = 1
    healthcheck: Optional[HealthCheck] = None  # its own check (the VIP's, overridden)


@dataclass(frozen=True)
class Vip:
    key: VipKey
    reals: Tuple[Real, ...]
    healthcheck: Optional[HealthCheck] = None  # the reals' check; None: none

    @cached_property
    def ring_text(self) -> str:
        """The reals' (identity, weight) lines that name the VIP's ring (maglev.ring_text)."""
        return ring_text({str(r.ip): r.weight for r in self.reals}.items())

    @cached_property
    def digests(self) -> Dict[int, int]:
        """Memo of the ring digest by ring size (plan.desired_digest fills it)."""
        return {}

    @cached_property
    def state_text(self) -> str:
        """Every real as an "ip mac weight" line, sorted: equal texts, equal reals."""
        return real_lines((r.ip, r.mac, r.weight) for r in self.reals)


def real_lines(reals: Iterable[Tuple[IPAddress, Optional[str], int]]) -> str:
    return "".join(sorted(f"{ip} {mac} {weight}\n" for ip, mac, weight in reals))


@dataclass(frozen=True)
class Metrics:
    listen: Optional[str] = None  # "host:port"; None = exporter off


@dataclass(frozen=True)
class BirdAnnounce:
    """Route announcement through BIRD 2 (core/announce.py, service/bird.py)."""

    file: str  # the include fragment xdplbd writes (two static protocols)
    socket: str = "/run/bird/bird.ctl"  # BIRD's control socket, to ask it to reconfigure


@dataclass(frozen=True)
class Config:
    vips: Tuple[Vip, ...]
    interface: Optional[str] = None
    xdp_mode: str = "auto"
    tunables: Tunables = field(default_factory=Tunables)
    metrics: Metrics = field(default_factory=Metrics)
    bird: Optional[BirdAnnounce] = None  # announce.bird; None = no route announcement
    # MACs besides the interface's that frames to a VIP may be addressed to
    # (a VRRP virtual MAC); frames to any other MAC pass (docs/dataplane.md).
    extra_macs: Tuple[str, ...] = ()


# -- Live state: what the pinned maps hold, as read back by the shell --------


@dataclass(frozen=True)
class LiveBackend:
    """One backend slot in use: a (VIP, real) pair; id in [1, max_reals)."""

    id: int
    ip: IPAddress
    mac: str
    weight: int


@dataclass(frozen=True)
class LiveVip:
    """A VIP in the VIP hash: its ring slot, the digest of its live ring, its backends."""

    key: VipKey
    id: int
    ring_digest: int
    backends: Tuple[LiveBackend, ...]

    @cached_property
    def top_backend_id(self) -> int:
        """The highest backend id, 0 if none."""
        return max((b.id for b in self.backends), default=0)

    @cached_property
    def kept(self) -> Dict[IPAddress, LiveBackend]:
        """Backends by ip, the lowest id of each ip (read-only)."""
        keep: Dict[IPAddress, LiveBackend] = {}
        for b in sorted(self.backends, key=lambda b: b.id):
            keep.setdefault(b.ip, b)
        return keep

    @cached_property
    def surplus(self) -> Tuple[LiveBackend, ...]:
        """Backends whose ip a lower id already has (left by a crash), by id."""
        kept = self.kept
        return tuple(b for b in sorted(self.backends, key=lambda b: b.id) if kept[b.ip] is not b)

    @cached_property
    def ring_text(self) -> str:
        """maglev.ring_text of the kept backends: what the stored digest should name."""
        return ring_text((str(b.ip), b.weight) for b in self.kept.values())

    @cached_property
    def state_text(self) -> str:
        """The kept backends as Vip.state_text lines."""
        return real_lines((b.ip, b.mac, b.weight) for b in self.kept.values())


@dataclass(frozen=True)
class LiveState:
    """The data plane as found. Orphans are ring slots / backends that no live VIP
    references (left by a crash mid-apply); their ids count as used until deleted."""

    vips: Tuple[LiveVip, ...] = ()
    orphan_vip_ids: frozenset[int] = frozenset()
    orphan_backend_ids: frozenset[int] = frozenset()
