"""The daemon <-> health checker messages, the pure part: JSON-ready values and back.

The checks run in their own process (service/healthd.py), so that probing thousands
of endpoints a second never competes with a reload for the daemon's GIL. They talk
in JSON lines over a socketpair; this module turns the model's objects into plain
lists and dicts and back, and nothing else (no I/O).

* A VipKey is [addr, port, proto]; a Check is a flat list (`check_to_wire`).
* A HealthState is the dict that health.json also stores (`state_to_dict`).
* health.json itself (the checker writes it, the daemon and `xdplb status` read it)
  is named here, so that the checker need not import the daemon's side.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, List, Sequence, Tuple

from xdplbd.core.health import Check, Probe
from xdplbd.core.model import IPAddress, VipKey

STATE_FILE = "health.json"
STATE_VERSION = 1


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def vipkey_to_wire(k: VipKey) -> List[Any]:
    return [str(k.addr), k.port, k.proto]


def vipkey_from_wire(w: Sequence[Any]) -> VipKey:
    return VipKey(ipaddress.ip_address(w[0]), int(w[1]), str(w[2]))


def check_to_wire(c: Check) -> List[Any]:
    p = c.probe
    return [p.kind, str(p.addr), p.port, p.timeout, p.mac, p.path, p.host, list(p.expect),
            p.send, p.receive, c.interval, c.rise, c.fall]


def check_from_wire(w: Sequence[Any]) -> Check:
    (kind, addr, port, timeout, mac, path, host, expect, send, receive, interval, rise,
     fall) = w
    probe = Probe(str(kind), ipaddress.ip_address(addr), int(port), float(timeout), str(mac),
                  str(path), str(host), (int(expect[0]), int(expect[1])), str(send),
                  str(receive))
    return Check(probe, float(interval), int(rise), int(fall))


def vip_checks_to_wire(key: VipKey, checks: Sequence[Tuple[IPAddress, Check]]) -> List[Any]:
    """One VIP's checks: [vipkey, [[real ip, check], ...]]."""
    return [vipkey_to_wire(key), [[str(ip), check_to_wire(c)] for ip, c in checks]]


def vip_checks_from_wire(w: Sequence[Any]) -> Tuple[VipKey, Tuple[Tuple[IPAddress, Check], ...]]:
    return vipkey_from_wire(w[0]), tuple((ipaddress.ip_address(ip), check_from_wire(c))
                                         for ip, c in w[1])
