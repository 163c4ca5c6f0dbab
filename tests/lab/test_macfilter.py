"""Two LB nodes on one bridge that floods: the real gets each frame once.

A switch floods a frame for a MAC it has not learned to every port; a bridge
with learning off on the LB ports does the same. Both LB nodes then see a
client's frame to the VIP that is addressed to node 1. Each node runs the
data plane with its own pin directory and its own MAC in lb_settings; only
node 1 may forward it. As a control, node 2 is then told node 1's MAC is one
of its own (extra_macs), and the real gets every frame twice: the duplicate
the filter exists to prevent.

Topology (prefix "mf" + pid): netns mf…-br with bridge br0; client, lb1, lb2
and real1, each with eth0 on a veth to br0.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from typing import Dict, Iterator, List

import pytest

from xdplbd.core.model import Config, Real, Tunables, Vip, VipKey
from xdplbd.core.plan import make_plan
from xdplbd.kernel import iface, libbpf, loader
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.netns import in_netns

PREFIX = f"mf{os.getpid()}"
NODES = {"client": "10.98.0.2", "lb1": "10.98.0.3", "lb2": "10.98.0.4", "real1": "10.98.0.11"}
VIP = "10.98.0.100"
TUNABLES = Tunables(max_vips=8, max_reals=16, conntrack_size=4096, ring_size=1009,
                    udp_timeout=30)
MARK = b"xdplb-macfilter"
ETH_P_ALL = 0x0003
FRAMES = 50


def ns(node: str) -> str:
    return f"{PREFIX}-{node}"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=15)


@pytest.fixture(scope="module")
def segment() -> Iterator[Dict[str, str]]:
    """The namespaces and links; yields each node's eth0 MAC."""
    assert os.geteuid() == 0, "the lab tests need root (network namespaces, XDP)"
    names = [ns("br")] + [ns(n) for n in NODES]
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", ns("br"), "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns("br"), "link", "set", "br0", "up")
        macs = {}
        for node, addr in NODES.items():
            port = f"p-{node}"
            sh("ip", "-n", ns("br"), "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns(node))
            sh("ip", "-n", ns("br"), "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns(node), "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns(node), "link", "set", "eth0", "up")
            with in_netns(ns(node)):
                macs[node] = iface.mac_address("eth0")
        for lb in ("lb1", "lb2"):
            # The bridge never learns where the LBs are, so it floods their frames
            # to every port, as a switch does for an unknown unicast.
            sh("ip", "netns", "exec", ns("br"), "bridge", "link", "set", "dev", f"p-{lb}",
               "learning", "off", "flood", "on")
            # XDP_TX out of a veth is delivered only if its peer has an XDP program.
            with in_netns(ns("br")):
                stub = libbpf.load_stub(libbpf.XDP_PASS)
                libbpf.xdp_attach(iface.ifindex(f"p-{lb}"), stub, "native")
                os.close(stub)
        yield macs
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)


@pytest.fixture(scope="module")
def lbs(segment: Dict[str, str]) -> Iterator[Dict[str, DataPlane]]:
    """Each LB node: the data plane in its own pin dir, attached to its eth0."""
    reals = (Real(ipaddress.ip_address(NODES["real1"]), segment["real1"]),)
    cfg = Config(vips=(Vip(VipKey(ipaddress.ip_address(VIP), 80, "tcp"), reals),),
                 tunables=TUNABLES)
    dps: Dict[str, DataPlane] = {}
    fds: List[int] = []
    try:
        for lb in ("lb1", "lb2"):
            pin_dir = f"/sys/fs/bpf/xdplb-{ns(lb)}"
            prog = loader.load(pin_dir, TUNABLES)
            fds.append(prog.fd)
            dp = dps[lb] = DataPlane(pin_dir, TUNABLES)
            dp.apply(make_plan(dp.read_live(), cfg).ops)
            dp.set_settings(segment[lb], TUNABLES.udp_timeout)
            with in_netns(ns(lb)):
                libbpf.xdp_attach(iface.ifindex("eth0"), prog.fd, "native")
        yield dps
    finally:
        for dp in dps.values():
            dp.close()
        for fd in fds:
            os.close(fd)
        for lb in ("lb1", "lb2"):
            loader.remove_pins(f"/sys/fs/bpf/xdplb-{ns(lb)}")


def frame(dst_mac: str, src_mac: str, sport: int) -> bytes:
    """A client's SYN to the VIP, carrying MARK, with valid checksums."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether(dst=dst_mac, src=src_mac) / IP(src=NODES["client"], dst=VIP)
                 / TCP(sport=sport, dport=80, flags="S") / MARK)


def copies_at_real(segment: Dict[str, str], frames: List[bytes]) -> int:
    """Send the frames from the client; count those that reach the real
    addressed to the real (forwarded by an LB, not flooded)."""
    real_mac = bytes.fromhex(segment["real1"].replace(":", ""))
    with in_netns(ns("real1")):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with in_netns(ns("client")):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        rx.bind(("eth0", ETH_P_ALL))
        rx.settimeout(0.2)
        tx.bind(("eth0", 0))
        for f in frames:
            tx.send(f)
        got = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                data, addr = rx.recvfrom(4096)
            except socket.timeout:
                continue
            if addr[2] != socket.PACKET_OUTGOING and data[:6] == real_mac and MARK in data:
                got += 1
        return got
    finally:
        rx.close()
        tx.close()


def test_a_flooded_frame_reaches_the_real_once(segment: Dict[str, str],
                                               lbs: Dict[str, DataPlane]) -> None:
    before = {lb: dp.outcomes() for lb, dp in lbs.items()}
    frames = [frame(segment["lb1"], segment["client"], 41000 + i) for i in range(FRAMES)]
    assert copies_at_real(segment, frames) == FRAMES
    after = {lb: dp.outcomes() for lb, dp in lbs.items()}
    # lb1 forwarded every frame; lb2 saw every one, flooded, and passed it (and
    # lb1's copies too, flooded while the bridge has not learned the real).
    assert after["lb1"]["tx"][0] - before["lb1"]["tx"][0] == FRAMES
    assert after["lb2"]["tx"][0] - before["lb2"]["tx"][0] == 0
    assert after["lb2"]["other_mac"][0] - before["lb2"]["other_mac"][0] >= FRAMES

    # The control: lb2 taking lb1's MAC as its own forwards the same frames too.
    lbs["lb2"].set_settings(segment["lb2"], TUNABLES.udp_timeout, [segment["lb1"]])
    try:
        frames = [frame(segment["lb1"], segment["client"], 42000 + i) for i in range(FRAMES)]
        assert copies_at_real(segment, frames) == 2 * FRAMES
    finally:
        lbs["lb2"].set_settings(segment["lb2"], TUNABLES.udp_timeout)
