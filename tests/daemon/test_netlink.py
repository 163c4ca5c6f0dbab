"""kernel/netlink.py against the real kernel: resolve_many packs its requests many to
a datagram and reads their acks by sequence number."""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
import time
import uuid
from typing import Dict, Iterator, List

import pytest

from tests.daemon.conftest import LB_IF, LB_MAC, PEER_IF, Netns
from xdplbd.core.neighbours import NeighEntry
from xdplbd.kernel import iface
from xdplbd.kernel.netlink import REQ_BATCH, Netlink
from xdplbd.kernel.netns import in_netns

NET = ipaddress.ip_network("10.61.0.0/22")
ANSWER = [ipaddress.ip_address(f"10.61.{1 + i // 200}.{1 + i % 200}") for i in range(300)]
SILENT = [ipaddress.ip_address(f"10.61.3.{1 + i}") for i in range(40)]  # nobody has them


@pytest.fixture
def peer(netns: Netns) -> Iterator[str]:
    """The veth's peer in a namespace of its own, holding the ANSWER addresses."""
    name = f"xdn-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        netns.ip("link", "set", PEER_IF, "netns", name)
        netns.ip("addr", "add", f"10.61.0.254/{NET.prefixlen}", "dev", LB_IF)
        batch = "".join(f"addr add {ip}/{NET.prefixlen} dev {PEER_IF}\n" for ip in ANSWER)
        batch += f"link set {PEER_IF} up\n"
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, text=True, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def table(nl: Netlink, ifindex: int) -> Dict[str, NeighEntry]:
    return {str(e.ip): e for e in nl.neighbours(ifindex)}


def test_resolve_many_asks_for_every_ip_in_batches(netns: Netns, peer: str) -> None:
    ips: List[ipaddress.IPv4Address] = [*ANSWER, *SILENT]
    assert len(ips) > 2 * REQ_BATCH  # several datagrams, and a partial last one
    with in_netns(netns.name):
        nl = Netlink()
        ifindex = iface.ifindex(LB_IF)
    try:
        assert nl.resolve_many(ifindex, ips) == {}
        peer_mac = subprocess.run(["ip", "-n", peer, "-br", "link", "show", PEER_IF],
                                  capture_output=True, text=True, check=True).stdout.split()[2]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = table(nl, ifindex)
            if sum(1 for ip in ANSWER if got.get(str(ip)) and got[str(ip)].valid) == len(ANSWER):
                break
            time.sleep(0.05)
        got = table(nl, ifindex)
        assert {str(ip) for ip in ips} <= set(got)  # every request made its entry
        assert all(got[str(ip)].valid and got[str(ip)].mac == peer_mac for ip in ANSWER)
        assert not any(got[str(ip)].valid for ip in SILENT)
        shown = subprocess.run(["ip", "-n", netns.name, "neigh", "show", "dev", LB_IF],
                               capture_output=True, text=True, check=True).stdout
        assert sum(1 for ln in shown.splitlines() if " managed " in ln) == len(ips)
    finally:
        nl.close()


def test_resolve_many_names_each_refused_ip(netns: Netns) -> None:
    """Every request fails on an interface that does not exist: each IP with its errno,
    matched to its request by sequence number across batches."""
    with in_netns(netns.name):
        nl = Netlink()
    try:
        ips = ANSWER[:REQ_BATCH + 5]
        refused = nl.resolve_many(9999, ips)
        assert set(refused) == set(ips)
        assert {e.errno for e in refused.values()} == {errno.ENODEV}
        with pytest.raises(OSError) as exc:
            nl.resolve(9999, ANSWER[0])
        assert exc.value.errno == errno.ENODEV and "10.61.1.1" in str(exc.value)
        assert nl.managed  # ENODEV says nothing about managed entries
    finally:
        nl.close()


def test_requests_answer_as_iproute_did(netns: Netns) -> None:
    """link, neighbours, lookup and forget give what pyroute2's IPRoute gave (which
    they replaced), absent things included, with a stray ack of a resolve batch
    waiting on the request socket."""
    from pyroute2 import IPRoute

    from xdplbd.kernel.netlink import _parse, _resolve_request

    subprocess.run(["ip", "netns", "exec", netns.name, "sysctl", "-qw",
                    f"net.ipv6.conf.{LB_IF}.disable_ipv6=0"], check=True)
    v4, v6 = ipaddress.ip_address("10.61.0.7"), ipaddress.ip_address("fd00::7")
    for ip, mac in ((v4, "02:00:00:61:00:07"), (v6, "02:00:00:61:00:08")):
        netns.ip("neigh", "add", str(ip), "lladdr", mac, "dev", LB_IF, "nud", "permanent")
    netns.ip("neigh", "add", "10.61.0.9", "lladdr", "02:00:00:61:00:09", "dev", PEER_IF,
             "nud", "permanent")  # another interface's: not in the dump
    with in_netns(netns.name):
        nl, ipr = Netlink(), IPRoute()
        ifindex = iface.ifindex(LB_IF)
    try:
        # acks that nobody waits for, ahead of every reply below
        nl._rq.sendto(b"".join(_resolve_request(0x7FFFFF00 + i, 9999, v4, True)
                               for i in range(3)), (0, 0))
        link = nl.link(LB_IF)
        assert link is not None and link == _parse(ipr.link("get", ifname=LB_IF)[0])
        assert (link.ifindex, link.ifname, link.mac, link.up) == (ifindex, LB_IF, LB_MAC, True)
        assert nl.link("nosuch0") is None

        want = [_parse(m) for m in ipr.get_neighbours(ifindex=ifindex)]
        got = nl.neighbours(ifindex)
        assert sorted(map(repr, got)) == sorted(repr(e) for e in want if e is not None)
        assert {str(e.ip) for e in got} >= {str(v4), str(v6)}
        assert "10.61.0.9" not in {str(e.ip) for e in got}

        for ip in (v4, v6):
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            found = nl.lookup(ifindex, ip)
            assert found is not None
            assert found == _parse(ipr.neigh("get", dst=str(ip), ifindex=ifindex,
                                             family=family)[0])
            nl.forget(ifindex, ip)
            assert nl.lookup(ifindex, ip) is None
            nl.forget(ifindex, ip)  # absent is fine
        with pytest.raises(OSError) as exc:
            nl.lookup(9999, v4)
        assert exc.value.errno == errno.ENODEV and str(v4) in str(exc.value)
        with pytest.raises(OSError) as exc:
            nl.forget(9999, v4)
        assert exc.value.errno == errno.ENODEV
    finally:
        nl.close()
        ipr.close()
