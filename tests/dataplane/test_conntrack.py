"""The connection table's buckets (bpf/xdplb.c, struct ct_bucket), through the
real program: which way a new flow takes, what a hit refreshes, and that the
data plane and xdplbd/conntrack.py agree on where a flow lives."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Dict, List

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.dataplane.harness import CLIENT_MAC, LB_MAC, DataPlaneHarness, real, vip
from xdplbd.core import conntrack, schema
from xdplbd.core.model import VipKey
from xdplbd.kernel import jiffies
from xdplbd.kernel.dataplane import lookup_flow, store_flow

VIP = "10.0.0.100"
CLIENT = ipaddress.ip_address("10.0.0.2")
REALS = [("10.0.0.11", "02:00:00:00:01:11"), ("10.0.0.12", "02:00:00:00:01:12")]
KEY = VipKey(ipaddress.ip_address(VIP), 80, "tcp")


def _configure(dpx: DataPlaneHarness) -> None:
    dpx.configure([vip(VIP, 80, "tcp", [real(i, m) for i, m in REALS])])


def _one_bucket(dpx: DataPlaneHarness, n: int) -> List[int]:
    """n client ports whose flows share one conntrack bucket."""
    buckets = dpx.maps["conntrack"].info.max_entries
    by_bucket: Dict[int, List[int]] = defaultdict(list)
    for sport in range(1024, 65536):
        fk = schema.pack_flow_key(CLIENT, KEY.addr, sport, 80, "tcp")
        ports = by_bucket[conntrack.locate(fk, buckets)[0]]
        ports.append(sport)
        if len(ports) == n:
            return ports
    raise AssertionError(f"no bucket holds {n} of 64k flows")


def _frame(sport: int, flags: str) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=LB_MAC) / IP(src=str(CLIENT), dst=VIP)
                 / TCP(sport=sport, dport=80, flags=flags))


def _entry(dpx: DataPlaneHarness, sport: int) -> conntrack.Entry | None:
    return lookup_flow(dpx, CLIENT, KEY.addr, sport, 80, "tcp")


def test_a_syn_lands_where_the_control_plane_looks(dpx: DataPlaneHarness) -> None:
    _configure(dpx)
    for sport in range(2000, 2050):
        assert dpx.run(_frame(sport, "S"))[0] == "tx"
        e = _entry(dpx, sport)
        assert e is not None and e.backend_id in {b.id for b in dpx.read_live().vips[0].backends}
    assert len(dpx.conntrack()) == 50


def test_a_new_flow_in_a_full_bucket_replaces_the_least_recently_seen(
        dpx: DataPlaneHarness) -> None:
    _configure(dpx)
    ports = _one_bucket(dpx, conntrack.WAYS + 1)
    bid = dpx.read_live().vips[0].backends[0].id
    now = jiffies.now_tick()
    # Fill the bucket; ports[3] was seen longest ago.
    ticks = [now - 10 + i for i in range(conntrack.WAYS)]
    ticks[3] = now - 30
    for sport, tick in zip(ports[:-1], ticks):
        store_flow(dpx, CLIENT, KEY.addr, sport, 80, "tcp", bid, tick)
    before = dpx.snapshot()
    assert dpx.run(_frame(ports[-1], "S"))[0] == "tx"
    assert dpx.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}
    assert _entry(dpx, ports[-1]) is not None
    assert _entry(dpx, ports[3]) is None
    assert all(_entry(dpx, p) is not None for i, p in enumerate(ports[:-1]) if i != 3)


def test_an_empty_way_is_taken_before_any_entry_is_replaced(dpx: DataPlaneHarness) -> None:
    _configure(dpx)
    ports = _one_bucket(dpx, conntrack.WAYS)
    bid = dpx.read_live().vips[0].backends[0].id
    for sport in ports[:-1]:
        store_flow(dpx, CLIENT, KEY.addr, sport, 80, "tcp", bid, jiffies.now_tick())
    assert dpx.run(_frame(ports[-1], "S"))[0] == "tx"
    assert all(_entry(dpx, p) is not None for p in ports)


def test_a_hit_refreshes_the_entry_so_active_flows_survive(dpx: DataPlaneHarness) -> None:
    _configure(dpx)
    ports = _one_bucket(dpx, conntrack.WAYS + 1)
    bid = dpx.read_live().vips[0].backends[1].id
    now = jiffies.now_tick()
    for sport in ports[:-1]:
        store_flow(dpx, CLIENT, KEY.addr, sport, 80, "tcp", bid, now - 100)
    # ports[0] sends a packet: its entry is now the youngest, and it keeps its real.
    assert dpx.run(_frame(ports[0], "A"))[0] == "tx"
    e = _entry(dpx, ports[0])
    assert e is not None and e.backend_id == bid
    assert conntrack.age(e.tick, jiffies.now_tick()) <= 1
    assert dpx.run(_frame(ports[-1], "S"))[0] == "tx"
    assert _entry(dpx, ports[0]) is not None
    survivors = sum(_entry(dpx, p) is not None for p in ports[1:-1])
    assert survivors == conntrack.WAYS - 2  # exactly one of the idle ones made room
