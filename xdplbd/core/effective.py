"""What the maps must hold: the config, filtered by health and completed by MACs.

The file is not the only input. A real's health (its checks' rise/fall
verdict) and its MAC from the kernel's neighbour table change what the data
plane should do without the file changing. This module folds them into one
effective Config, so the plan stays one pure function of (effective desired
state, live state). Health and neighbour events never write maps themselves:
they ask the daemon for one apply of `effective(...)`.

Rules (DESIGN.md sections 1 and 5):
* A real gets new flows only if its weight is > 0, it is not health-down and
  its MAC is known now (given in the config, or resolved by the kernel).
* A real that fails either test drains, as with weight 0: it keeps its
  backend (so tracked flows stay), with its last known MAC, and leaves the ring.
* A real whose MAC was never known has no backend at all: never forward to a
  zero MAC.
* Fail-open: when a VIP with health checks has no real that is up, health is
  ignored for it and every weighted real with a MAC takes new flows.
  Dropping everything is never better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

from xdplbd.core.model import Config, IPAddress, Real, Vip, VipKey

UP, DOWN, UNCHECKED = "up", "down", "unchecked"
ACTIVE, DRAINING, STATE_DOWN = "active", "draining", "down"
RealId = Tuple[VipKey, IPAddress]


@dataclass(frozen=True)
class Neighbour:
    """What the neighbour table says of a real's IP on the LB's interface."""

    mac: Optional[str]  # the last MAC known for the IP; None if never resolved
    resolved: bool  # the kernel holds a valid entry now
    reason: str = ""  # why not, for status ("no ARP reply", "interface gone", ...)


@dataclass(frozen=True)
class RealStatus:
    health: str  # up | down | unchecked
    state: str  # active | draining | down
    mac: Optional[str]  # the MAC the maps hold for it (None: no backend)
    mac_source: str  # config | neighbour | unresolved
    reason: str = ""  # why it is down, if it is


@dataclass(frozen=True)
class Effective:
    config: Config  # what the maps must hold
    reals: Dict[RealId, RealStatus]
    failing_open: FrozenSet[VipKey]


def _mac_of(real: Real, neigh: Mapping[IPAddress, Neighbour]) -> Tuple[Optional[str], bool, str]:
    """(MAC for the maps, usable for new flows, source)."""
    if real.mac:
        return real.mac, True, "config"
    n = neigh.get(real.ip)
    if n is None or n.mac is None:
        return None, False, "unresolved"
    return n.mac, n.resolved, "neighbour" if n.resolved else "unresolved"


# The last effective Vip object built for each VIP key: the plan memoises ring
# texts and digests on the object (model.Vip), so a VIP whose effective reals did
# not change must stay the same object from one apply to the next, or every reload
# rebuilds every ring digest. One entry per VIP: pruned to the config's VIPs.
_last_vip: Dict[VipKey, Tuple[Vip, Vip]] = {}  # key -> (the config's Vip, its effective one)


def _vip(vip: Vip, reals: Tuple[Real, ...]) -> Vip:
    """`vip` with these reals: the object built last time from an equal Vip, if its
    reals were the same."""
    last = _last_vip.get(vip.key)
    if last is not None and last[1].reals == reals and (last[0] is vip or last[0] == vip):
        return last[1]
    v = replace(vip, reals=reals)
    _last_vip[vip.key] = (vip, v)
    return v


def with_macs(cfg: Config, neigh: Mapping[IPAddress, Neighbour]) -> Config:
    """`cfg` with each MAC-less real's MAC from the neighbour table where one is known
    (the health checker's DSR probe is framed to it). The same object when nothing
    changes, so the checker sees the same checks."""
    vips = []
    for vip in cfg.vips:
        reals = tuple(
            replace(r, mac=neigh[r.ip].mac)
            if not r.mac and r.ip in neigh and neigh[r.ip].mac else r
            for r in vip.reals)
        vips.append(vip if all(a is b for a, b in zip(reals, vip.reals))
                    else replace(vip, reals=reals))
    if all(a is b for a, b in zip(vips, cfg.vips)):
        return cfg
    return replace(cfg, vips=tuple(vips))


def effective(cfg: Config, health: Mapping[RealId, str],
              neigh: Mapping[IPAddress, Neighbour]) -> Effective:
    """The config the maps must hold now, and why each real is where it is.

    `health` maps (VIP, real IP) to up/down (absent: unchecked); `neigh` maps
    a real IP to its neighbour entry (needed only for reals without a `mac`)."""
    statuses: Dict[RealId, RealStatus] = {}
    failing_open = set()
    vips = []
    for vip in cfg.vips:
        macs = {r.ip: _mac_of(r, neigh) for r in vip.reals}
        checked = [health.get((vip.key, r.ip), UNCHECKED) for r in vip.reals]
        fail_open = any(h != UNCHECKED for h in checked) and not any(
            h == UP and r.weight > 0 and macs[r.ip][1] for r, h in zip(vip.reals, checked))
        if fail_open:
            failing_open.add(vip.key)
        reals = []
        for real, h in zip(vip.reals, checked):
            mac, resolved, source = macs[real.ip]
            healthy = h != DOWN or fail_open
            if not resolved:
                state, reason = STATE_DOWN, "unresolved: " + (
                    neigh[real.ip].reason if real.ip in neigh else "no neighbour entry yet")
            elif not healthy:
                state, reason = STATE_DOWN, "health check failing"
            else:
                state, reason = (ACTIVE if real.weight else DRAINING), ""
            statuses[(vip.key, real.ip)] = RealStatus(h, state, mac, source, reason)
            if mac is not None:
                weight = real.weight if state == ACTIVE else 0
                same = mac == real.mac and weight == real.weight
                reals.append(real if same else replace(real, mac=mac, weight=weight))
        kept = tuple(reals)
        vips.append(vip if kept == vip.reals else _vip(vip, kept))
    if len(_last_vip) > 2 * len(cfg.vips) + 64:
        wanted = {v.key for v in cfg.vips}
        for key in [k for k in _last_vip if k not in wanted]:
            del _last_vip[key]
    unchanged = all(a is b for a, b in zip(vips, cfg.vips))
    eff_cfg = cfg if unchanged else replace(cfg, vips=tuple(vips))
    return Effective(eff_cfg, statuses, frozenset(failing_open))
