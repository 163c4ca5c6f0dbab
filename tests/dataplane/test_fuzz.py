"""Fuzzing through test_run: >= 20,000 generated and mutated frames.

Every verdict must be one the program can legitimately give, a non-VIP frame
must come back byte-for-byte unchanged, and a forwarded frame may differ only
in its two MAC addresses.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from tests.dataplane.harness import CLIENT_MAC, LB_MAC, DataPlaneHarness, real, vip

VIP4, VIP6 = "10.2.0.100", "fd02::100"
REALS = [real("10.2.0.11", "02:00:00:02:00:11"), real("10.2.0.12", "02:00:00:02:00:12")]
REALS6 = [real("fd02::11", "02:00:00:02:06:11")]
LEGAL = {"tx", "pass", "drop"}


def _configure(dpx: DataPlaneHarness) -> None:
    dpx.configure([
        vip(VIP4, 80, "tcp", REALS), vip(VIP4, 53, "udp", REALS),
        vip(VIP6, 80, "tcp", REALS6), vip("10.2.0.101", 80, "tcp", []),
    ])


def _check(dpx: DataPlaneHarness, frame: bytes) -> str:
    action, out = dpx.run(frame)
    assert action in LEGAL, action
    if action == "pass":
        assert out == frame
    elif action == "tx":
        assert len(out) == len(frame) and out[12:] == frame[12:]
    return action


def _seeds() -> list:
    e = Ether(src=CLIENT_MAC, dst=LB_MAC)
    return [bytes(p) for p in (
        e / IP(src="1.2.3.4", dst=VIP4) / TCP(sport=1000, dport=80, flags="S"),
        e / IP(src="1.2.3.4", dst=VIP4) / UDP(sport=1000, dport=53) / b"q",
        e / Dot1Q(vlan=3) / IP(src="1.2.3.4", dst=VIP4, ihl=6, options=b"\x01" * 4) / TCP(dport=80),
        e / IPv6(src="fd02::2", dst=VIP6) / TCP(sport=1, dport=80, flags="S"),
        e / IP(src="9.9.9.9", dst=VIP4) / ICMP(type=3, code=4) / IP(src=VIP4, dst="1.2.3.4")
        / TCP(sport=80, dport=1000),
        e / IPv6(src="fd02::9", dst=VIP6) / ICMPv6PacketTooBig() / IPv6(src=VIP6, dst="fd02::2")
        / TCP(sport=80, dport=1),
    )]


def test_mutated_frames(dpx: DataPlaneHarness) -> None:
    """15,000 frames: valid seeds with random byte flips, truncations and extensions."""
    _configure(dpx)
    rnd = random.Random(1234)
    seeds = _seeds()
    counts = {a: 0 for a in LEGAL}
    for _ in range(15_000):
        frame = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 4)):
            op = rnd.random()
            if op < 0.6:
                # bias towards the headers, where the parser decides things
                pos = min(int(rnd.expovariate(1 / 30)), len(frame) - 1)
                frame[pos] = rnd.randrange(256)
            elif op < 0.8:
                frame = frame[: max(14, rnd.randrange(len(frame) + 1))]
            else:
                frame += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))
        counts[_check(dpx, bytes(frame))] += 1
    assert all(counts[a] > 0 for a in LEGAL), counts


@settings(max_examples=6000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=14, max_size=200))
def test_random_bytes(dpx_fuzz: DataPlaneHarness, frame: bytes) -> None:
    _check(dpx_fuzz, frame)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dst=st.sampled_from([VIP4, "10.2.0.101", "10.2.0.5"]),
    sport=st.integers(0, 65535), dport=st.sampled_from([80, 53, 81, 0]),
    flags=st.integers(0, 255), ihl=st.integers(0, 15), frag=st.integers(0, 0x1FFF),
    mf=st.booleans(), proto=st.sampled_from([6, 17, 1, 47]),
    payload=st.binary(max_size=64), cut=st.integers(0, 120),
)
def test_structured_ipv4(dpx_fuzz: DataPlaneHarness, dst: str, sport: int, dport: int,
                         flags: int, ihl: int, frag: int, mf: bool, proto: int,
                         payload: bytes, cut: int) -> None:
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == 6 else UDP(sport=sport, dport=dport)
    pkt = (Ether(src=CLIENT_MAC, dst=LB_MAC)
           / IP(src="1.2.3.4", dst=dst, ihl=ihl or None, frag=frag, flags="MF" if mf else 0,
                proto=proto) / l4 / payload)
    frame = bytes(pkt)
    frame = frame[: max(14, len(frame) - cut)]
    action = _check(dpx_fuzz, frame)
    if dst == "10.2.0.5":
        assert action == "pass"  # never a VIP: untouched whatever the headers say
