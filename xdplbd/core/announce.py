"""Which VIP addresses this node announces to its router, and the BIRD fragment that says so.

Scale-out is routing (DESIGN.md section 5): every LB node runs the same config
and builds the same rings, BIRD announces the VIP host routes a node can
serve, the router spreads flows over the nodes with ECMP, and BFD removes a
dead node. This module decides, purely, what a node announces:

* nothing while the data plane is not attached or the node is in maintenance;
* an address is *preferred* while every service on it has an up real (or is
  not health-checked);
* an address with a service that has no up real here (the VIP fails open on
  this node) is *withdrawn* from the preferred set and announced only as a
  *last resort*: with a high MED, so a router that has a preferred route from
  any other node never uses it, and a router that has none (every node sees
  every real down) still spreads traffic over all nodes, each failing open.
  Dropping a VIP fleet-wide because of a health check is never safer than
  forwarding to reals that may well be alive (docs/scale-out.md).

Routes are host routes to a blackhole: the node's own BIRD must export them
to BGP only, never to its kernel (etc/xdplb/bird.conf.example).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Mapping, Tuple

from xdplbd.core.effective import UNCHECKED, UP, Effective
from xdplbd.core.model import IPAddress, VipKey

PROTOCOL_V4 = "xdplb_vips4"
PROTOCOL_V6 = "xdplb_vips6"
LAST_RESORT_MED = 4_000_000_000  # far above any MED an operator sets by hand

PREFERRED, LAST_RESORT, WITHDRAWN = "announced", "last-resort", "withdrawn"


@dataclass(frozen=True)
class Route:
    address: IPAddress
    last_resort: bool

    @property
    def prefix(self) -> str:
        return f"{self.address}/{self.address.max_prefixlen}"


@dataclass(frozen=True)
class Decision:
    routes: Tuple[Route, ...]  # what the fragment holds, sorted
    vips: Dict[VipKey, Tuple[str, str]]  # per VIP: (preferred|last-resort|withdrawn, why)


def has_up_real(eff: Effective, vip: VipKey) -> bool:
    """True if the VIP has a real taking new flows because it is up, or is unchecked
    (no health check: forwarding is all we know)."""
    if vip in eff.failing_open:
        return False
    return any(st.state == "active" and st.health in (UP, UNCHECKED)
               for (key, _), st in eff.reals.items() if key == vip)


def decide(eff: Effective, attached: bool, maintenance: bool) -> Decision:
    """The routes this node announces now, and each VIP's part in them."""
    keys = [v.key for v in eff.config.vips]
    if maintenance or not attached:
        why = "maintenance" if maintenance else "the data plane is not attached"
        return Decision((), {k: (WITHDRAWN, why) for k in keys})
    by_addr: Dict[IPAddress, List[VipKey]] = {}
    for k in keys:
        by_addr.setdefault(k.addr, []).append(k)
    routes: List[Route] = []
    vips: Dict[VipKey, Tuple[str, str]] = {}
    for addr, services in by_addr.items():
        down = [k for k in services if not has_up_real(eff, k)]
        routes.append(Route(addr, last_resort=bool(down)))
        for k in services:
            if k in down:
                vips[k] = (LAST_RESORT, "no up real on this node: failing open")
            elif down:
                vips[k] = (LAST_RESORT, f"{down[0]} on the same address has no up real")
            else:
                vips[k] = (PREFERRED, "")
    routes.sort(key=lambda r: (r.address.version, r.address))
    return Decision(tuple(routes), vips)


def _protocol(name: str, family: str, routes: Iterable[Route]) -> List[str]:
    lines = [f"protocol static {name} {{", f"  {family};"]
    for r in routes:
        extra = f" {{ bgp_med = {LAST_RESORT_MED}; }}" if r.last_resort else ""
        lines.append(f"  route {r.prefix} blackhole{extra};")
    lines.append("}")
    return lines


def render_bird(routes: Iterable[Route], header: str = "") -> str:
    """The BIRD 2 fragment: two static protocols, empty when nothing is announced."""
    rs = list(routes)
    lines = ["# Written by xdplbd: the VIP host routes this node announces now.",
             "# Do not edit: it is rewritten on every change (see lb_conf.json(5), announce)."]
    if header:
        lines.append(f"# {header}")
    lines += _protocol(PROTOCOL_V4, "ipv4", (r for r in rs if r.address.version == 4))
    lines += _protocol(PROTOCOL_V6, "ipv6", (r for r in rs if r.address.version == 6))
    return "\n".join(lines) + "\n"


def summary(decision: Decision) -> Mapping[str, FrozenSet[str]]:
    """Prefixes by kind, for logs and status."""
    return {
        PREFERRED: frozenset(r.prefix for r in decision.routes if not r.last_resort),
        LAST_RESORT: frozenset(r.prefix for r in decision.routes if r.last_resort),
    }
