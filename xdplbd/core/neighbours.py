"""What the kernel's neighbour table and links mean for the reals (pure).

The netlink shell (kernel/netlink.py) turns messages into NeighEntry and LinkEvent;
these rules turn them into the core/effective.py Neighbour of each real:

* a valid entry (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP) gives the MAC;
* FAILED means the kernel asked and nobody answered: unresolved, with the reason,
  keeping the last MAC known (effective() then drains the real);
* an entry being resolved (INCOMPLETE, NONE) or deleted (garbage collection, a
  flush) changes nothing yet: the kernel is asked again, and its answer decides.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from xdplbd.core.effective import Neighbour
from xdplbd.core.model import Config, IPAddress

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY
ZERO_MAC = "00:00:00:00:00:00"
# A burst of neighbour changes (thousands of reals resolving at once, each batch of
# events asking for an apply) makes one apply: it waits while changes keep coming at
# most BURST_QUIET_S apart, and never longer than BURST_MAX_S after the first. Each
# apply reads the maps and rebuilds the ring of every VIP whose reals changed (~20 ms
# a ring of 65537 slots), so one apply per burst instead of one per batch. A single
# MAC change waits BURST_QUIET_S.
BURST_QUIET_S = 0.05
BURST_MAX_S = 0.3


@dataclass(frozen=True)
class NeighEntry:
    """One neighbour table message (RTM_NEWNEIGH / RTM_DELNEIGH)."""

    ip: IPAddress
    ifindex: int
    mac: Optional[str]  # lowercase; None when the kernel has none (INCOMPLETE, FAILED)
    state: int  # NUD_* bits
    deleted: bool = False

    @classmethod
    def of(cls, dst: str, ifindex: int, lladdr: Optional[str], state: int,
           deleted: bool = False) -> NeighEntry:
        mac = lladdr.lower() if lladdr else None
        return cls(ipaddress.ip_address(dst), ifindex, mac, state, deleted)

    @property
    def valid(self) -> bool:
        return (not self.deleted and bool(self.state & NUD_VALID)
                and self.mac is not None and self.mac != ZERO_MAC)

    @property
    def failed(self) -> bool:
        return not self.deleted and bool(self.state & NUD_FAILED)


@dataclass(frozen=True)
class LinkEvent:
    """One link message (RTM_NEWLINK / RTM_DELLINK), or a link read on request."""

    ifindex: int
    ifname: Optional[str]
    mac: Optional[str]
    up: bool
    deleted: bool = False


def waiting(ip: IPAddress) -> Neighbour:
    return Neighbour(None, False, f"waiting for an {'ARP' if ip.version == 4 else 'NDP'} reply")


def observe(prev: Optional[Neighbour], e: NeighEntry) -> Optional[Neighbour]:
    """What a real's neighbour becomes after entry e; None if it stays as it was."""
    if e.valid:
        new = Neighbour(e.mac, True)
    elif e.failed:
        proto = "ARP" if e.ip.version == 4 else "NDP"
        new = Neighbour(prev.mac if prev else None, False, f"no {proto} reply")
    else:
        return None  # being resolved, or deleted: ask again and wait for the answer
    return None if new == prev else new


def apply_due(first: float, last: float) -> float:
    """When the apply for the neighbour changes of a burst is due, the burst's first
    change having come at `first` and its latest at `last` (monotonic seconds)."""
    return min(first + BURST_MAX_S, last + BURST_QUIET_S)


def needs_asking(e: NeighEntry) -> bool:
    """Whether the kernel must be asked to resolve the entry's IP again now: only when
    the entry went away. (A NONE entry is the one our own request just created: asking
    again would restart the probe it is about to send, and echo forever.)"""
    return e.deleted


def change_line(ip: IPAddress, old: Optional[Neighbour], new: Neighbour,
                ifname: str) -> Tuple[bool, str]:
    """(worth an info line, the text) for a real's neighbour change."""
    where = f"neighbour {ip} on {ifname}"
    if new.resolved and old is not None and old.resolved and old.mac != new.mac:
        return True, f"{where}: MAC {old.mac} -> {new.mac}"
    if new.resolved and old is not None and not old.resolved and old.mac is not None:
        moved = f" (MAC {old.mac} -> {new.mac})" if old.mac != new.mac else ""
        return True, f"{where}: resolved again to {new.mac}{moved}"
    if new.resolved:
        return False, f"{where}: resolved to {new.mac}"
    keep = "; draining on its last MAC" if new.mac else "; no backend until it resolves"
    return True, f"{where}: unresolved ({new.reason}){keep}"


def mac_conflicts(cfg: Config, neigh: Mapping[IPAddress, Neighbour]
                  ) -> Dict[IPAddress, Tuple[str, str]]:
    """Reals whose configured mac differs from what the neighbour table resolved:
    ip -> (configured, neighbour). The config wins; `xdplb status` warns."""
    out: Dict[IPAddress, Tuple[str, str]] = {}
    for vip in cfg.vips:
        for r in vip.reals:
            n = neigh.get(r.ip)
            if r.mac and n is not None and n.resolved and n.mac and n.mac != r.mac:
                out[r.ip] = (r.mac, n.mac)
    return out


def wanted(cfg: Config) -> Tuple[List[IPAddress], List[IPAddress]]:
    """(IPs to resolve: reals without a mac; IPs only watched: reals with one)."""
    resolve: Dict[IPAddress, None] = {}
    watch: Dict[IPAddress, None] = {}
    for vip in cfg.vips:
        for r in vip.reals:
            (watch if r.mac else resolve)[r.ip] = None
    return list(resolve), [ip for ip in watch if ip not in resolve]
