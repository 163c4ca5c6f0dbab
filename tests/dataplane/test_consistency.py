"""Flows keep their real when the set of reals changes (DESIGN.md principle 3).

10,000 random flows go through the real data plane; then the VIP's reals
change through the same plan/apply layer the daemon uses.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Dict, List, Tuple

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.dataplane.harness import CLIENT_MAC, LB_MAC, DataPlaneHarness, real, vip
from xdplbd.core import schema

VIP = "10.1.0.100"
REALS = [(f"10.1.0.{10 + i}", f"02:00:00:01:00:{10 + i:02x}") for i in range(10)]
MAC_TO_IP = {mac: ip for ip, mac in REALS}
N_FLOWS = 10_000


def _flows(seed: int) -> List[Tuple[str, int]]:
    rnd = random.Random(seed)
    out = set()
    while len(out) < N_FLOWS:
        src = f"172.16.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        out.add((src, rnd.randrange(1024, 65536)))
    return sorted(out)


Flows = List[Tuple[str, int]]


def _send(lb: DataPlaneHarness, flows: Flows, flags: str) -> Dict[Tuple[str, int], str]:
    owner = {}
    # scapy builds one template; each flow patches its source address and port
    # (offsets of an untagged IPv4/TCP frame; XDP does not check checksums).
    template = bytearray(bytes(Ether(src=CLIENT_MAC, dst=LB_MAC) / IP(src="0.0.0.0", dst=VIP)
                               / TCP(sport=1, dport=80, flags=flags)))
    for src, sport in flows:
        template[26:30] = ipaddress.IPv4Address(src).packed
        template[34:36] = sport.to_bytes(2, "big")
        action, out = lb.run(bytes(template))
        assert action == "tx", (src, sport, action)
        owner[(src, sport)] = MAC_TO_IP[schema.mac_str(out[:6])]
    return owner


def _config(weights: Dict[str, int]) -> list:
    return [vip(VIP, 80, "tcp", [real(ip, mac, weights.get(ip, 1)) for ip, mac in REALS
                                 if ip in weights])]


def test_removing_a_real_moves_only_its_flows(dpx: DataPlaneHarness) -> None:
    all_w = {ip: 1 for ip, _ in REALS}
    dpx.configure(_config(all_w))
    flows = _flows(1)
    before = _send(dpx, flows, "S")
    shares = {ip: sum(1 for o in before.values() if o == ip) for ip, _ in REALS}
    assert all(800 <= n <= 1200 for n in shares.values()), shares

    removed = REALS[3][0]
    dpx.configure(_config({ip: 1 for ip in all_w if ip != removed}))
    after = _send(dpx, flows, "A")  # established flows: no SYN
    moved_survivors = [f for f in flows if before[f] != removed and after[f] != before[f]]
    assert moved_survivors == []
    assert all(after[f] != removed for f in flows)
    # The removed real's flows spread over the survivors.
    assert len({after[f] for f in flows if before[f] == removed}) >= 5


def test_ring_alone_moves_about_one_nth_after_a_restart(dpx: DataPlaneHarness) -> None:
    """Without conntrack (a restarted or failed-over LB), Maglev keeps most flows."""
    dpx.configure(_config({ip: 1 for ip, _ in REALS}))
    flows = _flows(2)
    before = _send(dpx, flows, "S")
    dpx.configure(_config({ip: 1 for ip, _ in REALS[:-1]}))
    dpx.flush_conntrack()
    after = _send(dpx, flows, "A")
    moved = sum(1 for f in flows if before[f] != REALS[-1][0] and after[f] != before[f])
    assert moved / N_FLOWS < 0.03  # Maglev's small extra disruption, not a reshuffle


def test_drained_real_keeps_flows_and_gets_no_new_ones(dpx: DataPlaneHarness) -> None:
    weights = {ip: 1 for ip, _ in REALS}
    dpx.configure(_config(weights))
    flows = _flows(3)
    before = _send(dpx, flows, "S")
    drained = REALS[5][0]
    dpx.configure(_config({**weights, drained: 0}))
    kept = _send(dpx, flows, "A")
    assert kept == before  # every established flow stays, the drained real's too
    new_flows = _flows(4)
    fresh = _send(dpx, [f for f in new_flows if f not in before], "S")
    assert drained not in fresh.values()


def test_same_reals_in_another_order_give_the_same_choices(dpx: DataPlaneHarness) -> None:
    dpx.configure(_config({ip: 1 for ip, _ in REALS}))
    flows = _flows(5)[:2000]
    a = _send(dpx, flows, "S")
    shuffled = list(REALS)
    random.Random(9).shuffle(shuffled)
    dpx.configure([])
    dpx.flush_conntrack()
    dpx.configure([vip(VIP, 80, "tcp", [real(ip, mac) for ip, mac in shuffled])])
    assert _send(dpx, flows, "S") == a


def test_structured_clients_spread_evenly(dpx: DataPlaneHarness) -> None:
    """The ring hash must not follow patterns in the 5-tuple: one client walking
    its ports, and a block of consecutive addresses on one port."""
    dpx.configure(_config({ip: 1 for ip, _ in REALS}))
    n = 5000
    for flows in ([("172.16.0.1", 1024 + i) for i in range(n)],
                  [(str(ipaddress.IPv4Address("172.17.0.0") + i), 5000) for i in range(n)]):
        owner = _send(dpx, flows, "S")
        shares = {ip: sum(1 for o in owner.values() if o == ip) for ip, _ in REALS}
        assert all(0.8 * n / 10 <= s <= 1.2 * n / 10 for s in shares.values()), shares
