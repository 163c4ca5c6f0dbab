"""Every branch of bpf/xdplb.c, packet by packet, through BPF_PROG_TEST_RUN.

Each test asserts the verdict, the exact output bytes and the counters moved.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from tests.dataplane.harness import (
    CLIENT_MAC,
    LB_MAC,
    TEST_TUNABLES,
    DataPlaneHarness,
    real,
    vip,
)
from xdplbd.core import schema
from xdplbd.core.flowhash import ring_slot
from xdplbd.core.model import VipKey
from xdplbd.kernel.dataplane import lookup_flow, store_flow
from xdplbd.kernel.jiffies import now_tick

VIP4, VIP6 = "10.0.0.100", "fd00::100"
CLIENT4, CLIENT6 = "10.0.0.2", "fd00::2"
REALS4 = [("10.0.0.11", "02:00:00:00:01:11"), ("10.0.0.12", "02:00:00:00:01:12"),
          ("10.0.0.13", "02:00:00:00:01:13")]
REALS6 = [("fd00::11", "02:00:00:00:06:11"), ("fd00::12", "02:00:00:00:06:12")]
MACS = {mac: ip for ip, mac in REALS4 + REALS6}
K_TCP4 = VipKey(ipaddress.ip_address(VIP4), 80, "tcp")
K_UDP4 = VipKey(ipaddress.ip_address(VIP4), 53, "udp")
K_TCP6 = VipKey(ipaddress.ip_address(VIP6), 80, "tcp")


@pytest.fixture
def lb(dpx: DataPlaneHarness) -> DataPlaneHarness:
    dpx.configure([
        vip(VIP4, 80, "tcp", [real(i, m) for i, m in REALS4]),
        vip(VIP4, 53, "udp", [real(i, m) for i, m in REALS4]),
        vip(VIP6, 80, "tcp", [real(i, m) for i, m in REALS6]),
        vip("10.0.0.101", 80, "tcp", []),
    ])
    return dpx


def eth() -> Ether:
    return Ether(src=CLIENT_MAC, dst=LB_MAC)


def syn4(sport: int = 40000, dst: str = VIP4, dport: int = 80, flags: str = "S") -> bytes:
    return bytes(eth() / IP(src=CLIENT4, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
                 / (b"x" * 10))


def assert_forwarded(frame: bytes, out: bytes) -> str:
    """Only the two MACs differ; returns the real's IP the frame went to."""
    assert len(out) == len(frame)
    assert out[12:] == frame[12:], "nothing but the Ethernet addresses may change"
    assert out[6:12] == schema.mac_bytes(LB_MAC)
    dst_mac = schema.mac_str(out[0:6])
    assert dst_mac in MACS, f"forwarded to unknown MAC {dst_mac}"
    return MACS[dst_mac]


def expected_real(lb: DataPlaneHarness, key: VipKey, src: str, sport: int) -> str:
    """Where the ring sends this flow, computed in Python from the live ring."""
    fk = schema.pack_flow_key(ipaddress.ip_address(src), key.addr, sport, key.port, key.proto)
    ring = lb.ring(lb.vip_id(key))
    assert ring is not None
    bid = ring[ring_slot(fk, lb.tunables.ring_size)]
    return str(lb.backend_entries()[bid].ip)


# --- forwarding ----------------------------------------------------------------

def test_v4_syn_to_vip_is_forwarded_to_the_ring_real(lb: DataPlaneHarness) -> None:
    frame = syn4()
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert action == "tx"
    got = assert_forwarded(frame, out)
    assert got == expected_real(lb, K_TCP4, CLIENT4, 40000)
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}
    vid = lb.vip_id(K_TCP4)
    assert lb.vip_counter(vid) == (1, len(frame))
    assert lb.real_counter(lb.backend_id(K_TCP4, got)) == (1, len(frame))
    entry = lookup_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40000, 80, "tcp")
    assert entry is not None and entry.backend_id == lb.backend_id(K_TCP4, got)


def test_v6_syn_to_vip(lb: DataPlaneHarness) -> None:
    frame = bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40001, dport=80, flags="S"))
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert action == "tx"
    assert assert_forwarded(frame, out) == expected_real(lb, K_TCP6, CLIENT6, 40001)
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}


def test_established_flow_hits_conntrack_and_keeps_its_real(lb: DataPlaneHarness) -> None:
    first = assert_forwarded(syn4(40002), lb.run(syn4(40002))[1])
    # Point the entry at another real: a hit must follow the entry, not the ring.
    other = next(ip for ip, _ in REALS4 if ip != first)
    store_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40002, 80, "tcp",
               lb.backend_id(K_TCP4, other), now_tick())
    before = lb.snapshot()
    ack = syn4(40002, flags="A")
    action, out = lb.run(ack)
    assert action == "tx"
    assert assert_forwarded(ack, out) == other
    assert lb.delta(before) == {"tx": 1, "ct_hit": 1}


def test_tcp_non_syn_miss_uses_the_ring_and_inserts(lb: DataPlaneHarness) -> None:
    ack = syn4(40003, flags="PA")
    before = lb.snapshot()
    action, out = lb.run(ack)
    assert action == "tx"
    assert assert_forwarded(ack, out) == expected_real(lb, K_TCP4, CLIENT4, 40003)
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}


def test_syn_overrides_a_stale_entry(lb: DataPlaneHarness) -> None:
    ring_real = expected_real(lb, K_TCP4, CLIENT4, 40004)
    other = next(ip for ip, _ in REALS4 if ip != ring_real)
    store_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40004, 80, "tcp",
               lb.backend_id(K_TCP4, other), now_tick())
    before = lb.snapshot()
    action, out = lb.run(syn4(40004))
    assert action == "tx" and assert_forwarded(syn4(40004), out) == ring_real
    # The entry is rewritten in place: still a miss and an insert.
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}
    entry = lookup_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40004, 80, "tcp")
    assert entry is not None and entry.backend_id == lb.backend_id(K_TCP4, ring_real)


def test_udp_is_balanced_and_tracked(lb: DataPlaneHarness) -> None:
    frame = bytes(eth() / IP(src=CLIENT4, dst=VIP4) / UDP(sport=5000, dport=53) / b"q")
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert action == "tx"
    got = assert_forwarded(frame, out)
    assert got == expected_real(lb, K_UDP4, CLIENT4, 5000)
    action, out = lb.run(frame)
    assert action == "tx" and assert_forwarded(frame, out) == got
    assert lb.delta(before) == {"tx": 2, "ct_miss": 1, "ct_insert": 1, "ct_hit": 1}


def test_udp_entry_ages_out_after_idle_timeout(lb: DataPlaneHarness) -> None:
    ring_real = expected_real(lb, K_UDP4, CLIENT4, 5001)
    other = next(ip for ip, _ in REALS4 if ip != ring_real)
    # last seen ~18 minutes ago: idle far longer than the 30 s timeout
    store_flow(lb, ipaddress.ip_address(CLIENT4), K_UDP4.addr, 5001, 53, "udp",
               lb.backend_id(K_UDP4, other), now_tick() - 1000)
    frame = bytes(eth() / IP(src=CLIENT4, dst=VIP4) / UDP(sport=5001, dport=53))
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert action == "tx" and assert_forwarded(frame, out) == ring_real
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}


@pytest.mark.parametrize("tags", [[Dot1Q(vlan=10)], [Dot1AD(vlan=20), Dot1Q(vlan=30)]])
def test_vlan_tagged_frames_keep_their_tags(lb: DataPlaneHarness, tags: list) -> None:
    pkt = eth()
    for t in tags:
        pkt = pkt / t
    frame = bytes(pkt / IP(src=CLIENT4, dst=VIP4) / TCP(sport=40005, dport=80, flags="S"))
    action, out = lb.run(frame)
    assert action == "tx"
    assert assert_forwarded(frame, out) == expected_real(lb, K_TCP4, CLIENT4, 40005)


def test_ipv4_with_options_is_forwarded(lb: DataPlaneHarness) -> None:
    ip = IP(src=CLIENT4, dst=VIP4, options=[IPOption(b"\x94\x04\x00\x00"), IPOption(b"\x01" * 8)])
    frame = bytes(eth() / ip / TCP(sport=40006, dport=80, flags="S"))
    assert frame[14] & 0x0F == 8  # IHL 8: 12 bytes of options
    action, out = lb.run(frame)
    assert action == "tx"
    assert assert_forwarded(frame, out) == expected_real(lb, K_TCP4, CLIENT4, 40006)


def test_vip_without_reals_drops_and_counts_no_real(lb: DataPlaneHarness) -> None:
    frame = syn4(dst="10.0.0.101")
    before = lb.snapshot()
    assert lb.run(frame)[0] == "drop"
    assert lb.delta(before) == {"no_real": 1, "drop": 1, "ct_miss": 1}


# --- passing untouched ---------------------------------------------------------

PASS_FRAMES = {
    "non-VIP address": syn4(dst="10.0.0.50"),
    "wrong port": syn4(dport=81),
    "wrong protocol": bytes(eth() / IP(src=CLIENT4, dst=VIP4) / UDP(sport=1, dport=80)),
    "ARP": bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP4, psrc=CLIENT4)),
    "ping to VIP": bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP()),
    "ping6 to VIP": bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest()),
    "ICMP port unreachable": bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP(type=3, code=3)
                                   / IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=1)),
    "v6 to other port": bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / TCP(dport=443)),
    "v6 VIP address over v4 port VIP": bytes(eth() / IPv6(src=CLIENT6, dst=VIP6)
                                             / UDP(sport=1, dport=53)),
}


@pytest.mark.parametrize("name", sorted(PASS_FRAMES))
def test_not_for_a_vip_passes_unchanged(lb: DataPlaneHarness, name: str) -> None:
    frame = PASS_FRAMES[name]
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert (action, out) == ("pass", frame)
    assert lb.delta(before) == {"pass": 1}


def _truncations() -> dict:
    tcp4 = syn4()
    v6 = bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=1, dport=80, flags="S"))
    udp4 = bytes(eth() / IP(src=CLIENT4, dst=VIP4) / UDP(sport=1, dport=53))
    icmp = bytes(eth() / IP(src="10.9.9.9", dst=VIP4) / ICMP(type=3, code=4)
                 / IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=40000))
    ptb = bytes(eth() / IPv6(src="fd00::9", dst=VIP6) / ICMPv6PacketTooBig()
                / IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=40000))
    vlan = bytes(eth() / Dot1Q(vlan=5) / IP(src=CLIENT4, dst=VIP4) / TCP(dport=80))
    bad_ihl = bytearray(tcp4)
    bad_ihl[14] = 0x44  # IHL 4 < 5
    long_ihl = bytearray(tcp4[:14 + 24])
    long_ihl[14] = 0x4F  # claims 60 bytes of header
    bad_ver = bytearray(v6)
    bad_ver[14] = 0x40 | (bad_ver[14] & 0x0F)  # EtherType IPv6, version 4
    return {
        "vlan tag": vlan[:16],
        "ipv4 header": tcp4[:14 + 19],
        "ipv4 ihl < 5": bytes(bad_ihl),
        "ipv4 options past end": bytes(long_ihl),
        "tcp header": tcp4[:14 + 20 + 19],
        "udp header": udp4[:14 + 20 + 7],
        "ipv6 header": v6[:14 + 39],
        "ipv6 version": bytes(bad_ver),
        "ipv6 tcp header": v6[:14 + 40 + 10],
        "icmp header": icmp[:14 + 20 + 7],
        "icmp inner ip": icmp[:14 + 20 + 8 + 19],
        "icmp inner ports": icmp[:14 + 20 + 8 + 20 + 7],
        "icmpv6 inner ports": ptb[:14 + 40 + 8 + 40 + 7],
    }


TRUNCATED = _truncations()


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_or_malformed_passes_unchanged(lb: DataPlaneHarness, name: str) -> None:
    frame = TRUNCATED[name]
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert (action, out) == ("pass", frame)
    assert lb.delta(before) == {"pass": 1, "malformed": 1}


FRAGMENTS = {
    "v4 first fragment": bytes(eth() / IP(src=CLIENT4, dst=VIP4, flags="MF", id=7)
                               / UDP(sport=1, dport=53) / (b"a" * 32)),
    "v4 later fragment": bytes(eth() / IP(src=CLIENT4, dst=VIP4, frag=4, id=7, proto=17)
                               / (b"a" * 32)),
    "v6 fragment": bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(m=1)
                         / TCP(dport=80)),
}


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_fragments_pass_to_the_kernel_and_are_counted(lb: DataPlaneHarness, name: str) -> None:
    frame = FRAGMENTS[name]
    before = lb.snapshot()
    assert lb.run(frame) == ("pass", frame)
    assert lb.delta(before) == {"pass": 1, "fragment": 1}


# --- ICMP errors -----------------------------------------------------------------

def test_icmp_frag_needed_goes_to_the_real_owning_the_flow(lb: DataPlaneHarness) -> None:
    owner = assert_forwarded(syn4(40010), lb.run(syn4(40010))[1])
    # Move the flow's entry to another real: the error must follow the entry.
    other = next(ip for ip, _ in REALS4 if ip != owner)
    store_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40010, 80, "tcp",
               lb.backend_id(K_TCP4, other), now_tick())
    err = bytes(eth() / IP(src="10.9.9.9", dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400)
                / IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=40010, flags="A"))
    before = lb.snapshot()
    action, out = lb.run(err)
    assert action == "tx" and assert_forwarded(err, out) == other
    assert lb.delta(before) == {"tx": 1, "icmp_routed": 1}
    assert len(lb.conntrack()) == 1  # an ICMP error never creates an entry


def test_icmp_frag_needed_without_entry_uses_the_ring(lb: DataPlaneHarness) -> None:
    err = bytes(eth() / IP(src="10.9.9.9", dst=VIP4) / ICMP(type=3, code=4)
                / IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=40011))
    action, out = lb.run(err)
    assert action == "tx"
    assert assert_forwarded(err, out) == expected_real(lb, K_TCP4, CLIENT4, 40011)
    assert lb.conntrack() == []


def test_icmpv6_packet_too_big_goes_to_the_real_owning_the_flow(lb: DataPlaneHarness) -> None:
    syn = bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40012, dport=80, flags="S"))
    owner = assert_forwarded(syn, lb.run(syn)[1])
    ptb = bytes(eth() / IPv6(src="fd00::9", dst=VIP6) / ICMPv6PacketTooBig(mtu=1280)
                / IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=40012, flags="A"))
    before = lb.snapshot()
    action, out = lb.run(ptb)
    assert action == "tx" and assert_forwarded(ptb, out) == owner
    assert lb.delta(before) == {"tx": 1, "icmp_routed": 1}


def test_icmp_error_about_a_non_vip_flow_passes(lb: DataPlaneHarness) -> None:
    err = bytes(eth() / IP(src="10.9.9.9", dst="10.0.0.50") / ICMP(type=3, code=4)
                / IP(src="10.0.0.50", dst=CLIENT4) / TCP(sport=80, dport=40013))
    before = lb.snapshot()
    assert lb.run(err) == ("pass", err)
    assert lb.delta(before) == {"pass": 1}


# --- reals changing under live flows ---------------------------------------------

def test_removed_real_flows_move_on_their_next_packet(lb: DataPlaneHarness) -> None:
    owner = assert_forwarded(syn4(40020), lb.run(syn4(40020))[1])
    remaining = [(i, m) for i, m in REALS4 if i != owner]
    lb.configure([
        vip(VIP4, 80, "tcp", [real(i, m) for i, m in remaining]),
        vip(VIP4, 53, "udp", [real(i, m) for i, m in REALS4]),
        vip(VIP6, 80, "tcp", [real(i, m) for i, m in REALS6]),
        vip("10.0.0.101", 80, "tcp", []),
    ])
    ack = syn4(40020, flags="A")
    before = lb.snapshot()
    action, out = lb.run(ack)
    assert action == "tx"
    moved_to = assert_forwarded(ack, out)
    assert moved_to != owner and moved_to == expected_real(lb, K_TCP4, CLIENT4, 40020)
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}


# --- vip_index: the data plane's direct-mapped front of the VIP hash --------------

def _slot(key: VipKey) -> int:
    return schema.vip_slot(schema.pack_vip_key(key), schema.vip_index_slots(TEST_TUNABLES))


def _port_sharing_slot(key: VipKey, skip: int = 0) -> int:
    """A port != key.port (and != skip) whose VipKey on key's address folds to key's slot."""
    for port in range(1, 65536):
        other = VipKey(key.addr, port, key.proto)
        if port not in (key.port, skip) and _slot(other) == _slot(key):
            return port
    raise AssertionError("no colliding port")


def _slot_state(dp: DataPlaneHarness, key: VipKey) -> tuple:
    raw = dp.maps["vip_index"].lookup(schema.U32.pack(_slot(key)))
    assert raw is not None
    state, vip_id, packed = schema.VIP_SLOT.unpack(raw[: schema.VIP_SLOT.size])
    return state, vip_id, packed


def _meaning(slot: tuple) -> tuple:
    """What the data plane reads of a slot: id and key only when it is EXACT."""
    return slot if slot[0] == schema.VIP_SLOT_EXACT else slot[:1]


def _reals4() -> list:
    return [real(i, m) for i, m in REALS4]


def test_vips_sharing_an_index_slot_both_forward(dpx: DataPlaneHarness) -> None:
    port = _port_sharing_slot(K_TCP4)
    dpx.configure([vip(VIP4, 80, "tcp", _reals4()), vip(VIP4, port, "tcp", _reals4())])
    assert _slot_state(dpx, K_TCP4)[0] == schema.VIP_SLOT_SHARED
    for dport in (80, port):
        frame = syn4(41000, dport=dport)
        action, out = dpx.run(frame)
        key = VipKey(K_TCP4.addr, dport, "tcp")
        assert action == "tx" and assert_forwarded(frame, out) == expected_real(
            dpx, key, CLIENT4, 41000)


def test_vip_still_forwards_after_a_vip_sharing_its_slot_is_removed(
    dpx: DataPlaneHarness,
) -> None:
    port = _port_sharing_slot(K_TCP4)
    survivor = VipKey(K_TCP4.addr, port, "tcp")
    dpx.configure([vip(VIP4, 80, "tcp", _reals4()), vip(VIP4, port, "tcp", _reals4())])
    dpx.configure([vip(VIP4, port, "tcp", _reals4())])
    # The survivor now has the slot to itself.
    state, vip_id, packed = _slot_state(dpx, survivor)
    assert (state, vip_id, packed) == (
        schema.VIP_SLOT_EXACT, dpx.vip_id(survivor), schema.pack_vip_key(survivor))
    frame = syn4(41001, dport=port)
    before = dpx.snapshot()
    action, out = dpx.run(frame)
    assert action == "tx"
    assert assert_forwarded(frame, out) == expected_real(dpx, survivor, CLIENT4, 41001)
    assert dpx.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}
    # The removed VIP, in the same slot, is not a VIP any more.
    gone = syn4(41002, dport=80)
    before = dpx.snapshot()
    assert dpx.run(gone) == ("pass", gone)
    assert dpx.delta(before) == {"pass": 1}
    dpx.configure([])
    assert _slot_state(dpx, survivor)[0] == schema.VIP_SLOT_EMPTY


def test_three_vips_in_one_slot_stay_shared_until_one_is_left(dpx: DataPlaneHarness) -> None:
    p2 = _port_sharing_slot(K_TCP4)
    p3 = _port_sharing_slot(K_TCP4, skip=p2)
    dpx.configure([vip(VIP4, p, "tcp", _reals4()) for p in (80, p2, p3)])
    dpx.configure([vip(VIP4, p, "tcp", _reals4()) for p in (p2, p3)])
    assert _slot_state(dpx, K_TCP4)[0] == schema.VIP_SLOT_SHARED
    for dport in (p2, p3):
        assert dpx.run(syn4(41003, dport=dport))[0] == "tx"
    dpx.configure([vip(VIP4, p3, "tcp", _reals4())])
    assert _slot_state(dpx, K_TCP4)[0] == schema.VIP_SLOT_EXACT
    assert dpx.run(syn4(41004, dport=p3))[0] == "tx"
    assert dpx.run(syn4(41005, dport=p2))[0] == "pass"


def test_non_vip_folding_to_a_vips_slot_passes(dpx: DataPlaneHarness) -> None:
    dpx.configure([vip(VIP4, 80, "tcp", _reals4())])
    assert _slot_state(dpx, K_TCP4)[0] == schema.VIP_SLOT_EXACT
    frame = syn4(41006, dport=_port_sharing_slot(K_TCP4))
    before = dpx.snapshot()
    assert dpx.run(frame) == ("pass", frame)
    assert dpx.delta(before) == {"pass": 1}


def test_sync_rebuilds_the_index_from_the_vips(dpx: DataPlaneHarness) -> None:
    port = _port_sharing_slot(K_TCP4)
    keys = [K_TCP4, VipKey(K_TCP4.addr, port, "tcp"), K_TCP6]
    dpx.configure([vip(VIP4, 80, "tcp", _reals4()), vip(VIP4, port, "tcp", _reals4()),
                   vip(VIP6, 80, "tcp", [real(i, m) for i, m in REALS6])])
    want = {k: _meaning(_slot_state(dpx, k)) for k in keys}
    index = dpx.maps["vip_index"]
    for i in range(index.info.max_entries):
        index.update(schema.U32.pack(i), schema.EMPTY_VIP_SLOT)
    frame = syn4(41007)
    assert dpx.run(frame) == ("pass", frame), "an empty slot means: not a VIP"
    dpx.sync_vip_index()
    assert {k: _meaning(_slot_state(dpx, k)) for k in keys} == want
    assert dpx.run(frame)[0] == "tx"


# --- only frames addressed to this LB --------------------------------------------

OTHER_LB_MAC = "02:00:00:00:ee:01"  # another LB node on the segment
VRRP_MAC = "00:00:5e:00:01:01"


@pytest.mark.parametrize("dst_mac", [OTHER_LB_MAC, "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"])
def test_frame_to_a_vip_for_another_host_passes_untouched(lb: DataPlaneHarness,
                                                          dst_mac: str) -> None:
    # A promiscuous NIC or a flooding switch shows this node another node's
    # frame: balancing it too would send the real a duplicate.
    for frame in (bytes(Ether(src=CLIENT_MAC, dst=dst_mac) / IP(src=CLIENT4, dst=VIP4)
                        / TCP(sport=40100, dport=80, flags="S")),
                  bytes(Ether(src=CLIENT_MAC, dst=dst_mac) / IP(src="9.9.9.9", dst=VIP4)
                        / ICMP(type=3, code=4) / IP(src=VIP4, dst=CLIENT4)
                        / TCP(sport=80, dport=40100))):
        before = lb.snapshot()
        assert lb.run(frame) == ("pass", frame)
        assert lb.delta(before) == {"pass": 1, "other_mac": 1}
    assert lookup_flow(lb, ipaddress.ip_address(CLIENT4), K_TCP4.addr, 40100, 80, "tcp") is None


def test_frame_to_an_extra_mac_is_balanced(lb: DataPlaneHarness) -> None:
    frame = bytes(Ether(src=CLIENT_MAC, dst=VRRP_MAC) / IP(src=CLIENT4, dst=VIP4)
                  / TCP(sport=40101, dport=80, flags="S"))
    assert lb.run(frame) == ("pass", frame)
    lb.set_settings(LB_MAC, TEST_TUNABLES.udp_timeout, ["00:00:5e:00:01:02", VRRP_MAC])
    assert lb.extra_macs() == ["00:00:5e:00:01:02", VRRP_MAC]
    before = lb.snapshot()
    action, out = lb.run(frame)
    assert action == "tx"
    assert assert_forwarded(frame, out) == expected_real(lb, K_TCP4, CLIENT4, 40101)
    assert lb.delta(before) == {"tx": 1, "ct_miss": 1, "ct_insert": 1}
    # Dropped from the config: no longer this LB's.
    lb.set_settings(LB_MAC, TEST_TUNABLES.udp_timeout, [])
    before = lb.snapshot()
    assert lb.run(frame) == ("pass", frame)
    assert lb.delta(before) == {"pass": 1, "other_mac": 1}


def test_non_vip_frame_to_another_mac_is_plain_pass(lb: DataPlaneHarness) -> None:
    frame = bytes(Ether(src=CLIENT_MAC, dst=OTHER_LB_MAC) / IP(src=CLIENT4, dst="10.0.0.5")
                  / TCP(sport=40102, dport=80, flags="S"))
    before = lb.snapshot()
    assert lb.run(frame) == ("pass", frame)
    assert lb.delta(before) == {"pass": 1}
