"""Typed values shared by the pure core (config, maglev, plan) and the shell.

Everything here is immutable and free of I/O, so it can be compared, hashed
and tested without root.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTOCOLS = {"tcp": 6, "udp": 17}
XDP_MODES = ("native", "generic", "auto")


@dataclass(frozen=True)
class Tunables:
    """Map sizes and timeouts. Sizes are memory choices (docs/tunables.md)."""

    max_vips: int = 512  # VIP slots (hash + ring outer array)
    max_reals: int = 4096  # backend slots: one per (VIP, real) pair, id 0 reserved
    conntrack_size: int = 1048576  # LRU entries, ~100 bytes each
    ring_size: int = 65537  # Maglev M, prime, >= 100 x the largest VIP's reals
    udp_timeout: int = 30  # seconds a UDP flow may idle before it is re-hashed


@dataclass(frozen=True)
class VipKey:
    """A service: address, port and protocol name ("tcp" | "udp")."""

    addr: IPAddress
    port: int
    proto: str

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class Real:
    """A real server of one VIP. Its identity is its IP; mac is lowercase a:b:c:d:e:f."""

    ip: IPAddress
    mac: str
    weight: int = 1


@dataclass(frozen=True)
class Vip:
    key: VipKey
    reals: Tuple[Real, ...]


@dataclass(frozen=True)
class Metrics:
    listen: Optional[str] = None  # "host:port"; None = exporter off


@dataclass(frozen=True)
class Config:
    vips: Tuple[Vip, ...]
    interface: Optional[str] = None
    xdp_mode: str = "auto"
    tunables: Tunables = field(default_factory=Tunables)
    metrics: Metrics = field(default_factory=Metrics)


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


@dataclass(frozen=True)
class LiveState:
    """The data plane as found. Orphans are ring slots / backends that no live VIP
    references (left by a crash mid-apply); their ids count as used until deleted."""

    vips: Tuple[LiveVip, ...] = ()
    orphan_vip_ids: frozenset[int] = frozenset()
    orphan_backend_ids: frozenset[int] = frozenset()
