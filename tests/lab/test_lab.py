"""The namespace lab itself, without any load balancer (plus one raw XDP_TX check).

These prove the lab is what DSR needs: each real serves its own name over TCP and
UDP, only the LB answers ARP/NDP for the VIPs, a real accepts frames sent to its MAC
with the VIP as destination, XDP_TX out of the LB reaches a real, and down() leaves
nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, List, Set

import pytest

from tests.lab.conftest import SESSION_PREFIX
from xdplbd.kernel import libbpf
from xdplbd.lab.topology import (
    IFNAME,
    NETNS_DIR,
    Lab,
    LabSpec,
    attach_insns,
    attach_stub,
    in_netns,
    nsenter_cmd,
    pids_in_netns,
    write_sysctls,
)

# --------------------------------------------------------------------------- raw frames


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@contextmanager
def packet_socket(ns: str, ifname: str = IFNAME) -> Iterator[socket.socket]:
    """An AF_PACKET socket on *ifname* in *ns* (it stays in that netns after we leave)."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((ifname, 0))
    with s:
        yield s


def _collect(s: socket.socket, window: float) -> List[bytes]:
    frames = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            frames.append(s.recv(65535))
        except socket.timeout:
            break
    return frames


def arp_responders(lab: Lab, target: str, window: float = 0.3) -> Set[str]:
    """MACs that answer a broadcast ARP who-has *target* from the client."""
    me = _mac_bytes(lab.client_mac)
    tip = ipaddress.IPv4Address(target).packed
    sip = ipaddress.IPv4Address(lab.client_ip4).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, me, sip, bytes(6), tip)
    frame = b"\xff" * 6 + me + b"\x08\x06" + arp
    with packet_socket(lab.ns_client) as s:
        s.send(frame)
        frames = _collect(s, window)
    out = set()
    for f in frames:
        if f[12:14] == b"\x08\x06" and len(f) >= 42:
            op, sha, spa = struct.unpack("!H6s4s", f[20:32])
            if op == 2 and spa == tip:
                out.add(_mac_str(sha))
    return out


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ndp_responders(lab: Lab, target: str, window: float = 0.3) -> Set[str]:
    """MACs that answer a Neighbor Solicitation for *target* from the client."""
    me = _mac_bytes(lab.client_mac)
    tgt = ipaddress.IPv6Address(target).packed
    src = ipaddress.IPv6Address(lab.client_ip6).packed
    dst = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + tgt[13:]  # solicited-node
    body = struct.pack("!BBHI", 135, 0, 0, 0) + tgt + bytes([1, 1]) + me  # NS + SLLA option
    pseudo = src + dst + struct.pack("!I", len(body)) + b"\0\0\0\x3a"
    body = body[:2] + struct.pack("!H", _csum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src + dst
    frame = b"\x33\x33" + dst[12:] + me + b"\x86\xdd" + ip6 + body
    with packet_socket(lab.ns_client) as s:
        s.send(frame)
        frames = _collect(s, window)
    out = set()
    for f in frames:
        is_na = f[12:14] == b"\x86\xdd" and len(f) >= 78 and f[20] == 58 and f[54] == 136
        if is_na and f[62:78] == tgt:
            out.add(_mac_str(f[6:12]))
    return out


def client_neigh_mac(lab: Lab, ip: str) -> str:
    out = lab.client_exec(["ip", "-j", "neigh", "show", "to", ip, "dev", IFNAME]).stdout
    entries = json.loads(out or "[]")
    return str(entries[0].get("lladdr", "")) if entries else ""


def flush_client_neigh(lab: Lab, *ips: str) -> None:
    for ip in ips:
        lab.client_exec(["ip", "neigh", "flush", "to", ip, "dev", IFNAME], check=False)


# --------------------------------------------------------------------------- namespaces


def test_in_netns_switches_and_restores_only_the_thread(lab: Lab) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    target = os.stat(f"{NETNS_DIR}/{lab.ns_lb}").st_ino
    with in_netns(lab.ns_lb):
        assert os.stat("/proc/thread-self/ns/net").st_ino == target
        assert socket.if_nameindex()  # lo and eth0 of the LB, not the host's
        assert {n for _, n in socket.if_nameindex()} == {"lo", IFNAME}
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


def test_nsenter_keeps_bpffs_visible_ip_netns_exec_does_not(lab: Lab) -> None:
    fs = ["stat", "-f", "-c", "%T", "/sys/fs/bpf"]
    assert (
        subprocess.run(
            nsenter_cmd(lab.ns_lb, fs), capture_output=True, text=True, check=True
        ).stdout.strip()
        == "bpf_fs"
    )
    hidden = subprocess.run(
        ["ip", "netns", "exec", lab.ns_lb, *fs], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert hidden != "bpf_fs"


def test_layout(lab: Lab) -> None:
    assert set(lab.existing_namespaces()) == set(lab.namespaces)
    assert lab.is_up()
    macs = {r.mac for r in lab.reals} | {lab.lb_mac, lab.client_mac}
    assert len(macs) == 2 + len(lab.real_names)
    # XDP_PASS on the LB's bridge-side peer only; the reals' peers need none.
    with in_netns(lab.ns_br):
        assert libbpf.xdp_prog_id(socket.if_nametoindex("v-lb"), "native")
        for r in lab.real_names:
            assert libbpf.xdp_prog_id(socket.if_nametoindex(f"v-{r}")) == 0
    # The client's tx checksum offload is off (native XDP_TX on veth needs it).
    k = lab.client_exec(["ethtool", "-k", IFNAME]).stdout
    assert "tx-checksumming: off" in k
    # DSR sysctls on the reals, on all and on eth0.
    for r in lab.real_names:
        for key, want in (("arp_ignore", "1"), ("arp_announce", "2")):
            for dev in ("all", IFNAME):
                out = lab.ns_exec(lab.real_ns(r), ["cat", f"/proc/sys/net/ipv4/conf/{dev}/{key}"])
                assert out.stdout.strip() == want, (r, dev, key)


def test_lab_config(lab: Lab) -> None:
    cfg = lab.config()
    assert cfg["interface"] == IFNAME
    keys = [(v["vip"], v["port"], v["protocol"]) for v in cfg["vips"]]
    assert keys == [(lab.vip4, 80, "tcp"), (lab.vip4, 5353, "udp"), (lab.vip6, 80, "tcp")]
    for v in cfg["vips"]:
        v6 = ":" in v["vip"]
        assert [r["ip"] for r in v["reals"]] == [  # no MACs: xdplbd resolves them
            lab.real_ip6(n) if v6 else lab.real_ip4(n) for n in lab.real_names
        ]
        assert not any("mac" in r for r in v["reals"])
    with open(os.path.join(lab.state_dir, "lb_conf.json")) as f:
        assert json.load(f) == cfg


# --------------------------------------------------------------------------- services


def test_curl_each_real_by_own_ip(lab: Lab) -> None:
    for r in lab.reals:
        assert lab.curl(f"http://{r.ip4}/") == f"{r.name}\n"
        assert lab.curl(f"http://[{r.ip6}]/") == f"{r.name}\n"


def test_udp_each_real_by_own_ip(lab: Lab) -> None:
    for r in lab.reals:
        assert lab.udp(r.ip4) == f"{r.name}\n"
        assert lab.udp(r.ip6) == f"{r.name}\n"


def test_nginx_keepalive(lab: Lab) -> None:
    ip = lab.real_ip4("real1")
    out = lab.client_exec(
        [
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-w",
            "%{num_connects}\n",
            "--max-time",
            "3",
            f"http://{ip}/",
            f"http://{ip}/",
            f"http://{ip}/",
        ]
    ).stdout
    lines = out.split("\n")
    assert lines.count("real1") == 3
    assert [x for x in lines if x.isdigit()] == ["1", "0", "0"]  # one connection reused


def test_stop_start_nginx(lab: Lab) -> None:
    url = f"http://{lab.real_ip4('real2')}/"
    lab.stop_nginx("real2")
    try:
        with pytest.raises(subprocess.CalledProcessError):
            lab.curl(url, timeout=1)
        assert lab.udp(lab.real_ip4("real2")) == "real2\n"  # UDP service is independent
        assert not lab.is_up()
    finally:
        lab.start_nginx("real2")
    assert lab.curl(url) == "real2\n"
    assert lab.is_up()


# --------------------------------------------------------------------------- VIP neighbours


def test_arp_for_vip_answered_only_by_lb(lab: Lab) -> None:
    flush_client_neigh(lab, lab.vip4)
    assert arp_responders(lab, lab.vip4) == {lab.lb_mac}
    # The client's own resolution agrees (the LB refuses tcp/80: that is fine).
    lab.client_exec(
        ["curl", "-s", "--noproxy", "*", "--max-time", "1", f"http://{lab.vip4}/"], check=False
    )
    assert client_neigh_mac(lab, lab.vip4) == lab.lb_mac
    # Each real still answers ARP for its own address.
    for r in lab.reals:
        assert arp_responders(lab, r.ip4, window=0.1) == {r.mac}


def test_arp_probe_would_see_a_real_without_arp_ignore(lab: Lab) -> None:
    """Negative control: the probe does detect a real that answers for the VIP."""
    ns = lab.real_ns("real1")
    keys = ("net.ipv4.conf.all.arp_ignore", f"net.ipv4.conf.{IFNAME}.arp_ignore")
    write_sysctls(ns, dict.fromkeys(keys, "0"))
    try:
        assert lab.real_macs()["real1"] in arp_responders(lab, lab.vip4)
    finally:
        write_sysctls(ns, dict.fromkeys(keys, "1"))
        flush_client_neigh(lab, lab.vip4)
    assert arp_responders(lab, lab.vip4) == {lab.lb_mac}


def test_ndp_for_vip_answered_only_by_lb(lab: Lab) -> None:
    flush_client_neigh(lab, lab.vip6)
    assert ndp_responders(lab, lab.vip6) == {lab.lb_mac}
    lab.client_exec(
        ["curl", "-sg", "--noproxy", "*", "--max-time", "1", f"http://[{lab.vip6}]/"], check=False
    )
    assert client_neigh_mac(lab, lab.vip6) == lab.lb_mac
    for r in lab.reals:
        assert ndp_responders(lab, r.ip6, window=0.1) == {r.mac}


def test_ndp_probe_would_see_a_real_with_vip_on_eth0(lab: Lab) -> None:
    """Negative control: the VIP on a real's eth0 (not lo) is answered, and the probe sees it."""
    ns = lab.real_ns("real1")
    add = ["ip", "addr", "add", f"{lab.vip6}/128", "dev", IFNAME, "nodad"]
    lab.ns_exec(ns, add)
    try:
        assert lab.real_macs()["real1"] in ndp_responders(lab, lab.vip6)
    finally:
        lab.ns_exec(ns, ["ip", "addr", "del", f"{lab.vip6}/128", "dev", IFNAME])
        flush_client_neigh(lab, lab.vip6)


def test_real_accepts_vip_frames_sent_to_its_mac(lab: Lab) -> None:
    """What DSR relies on: VIP as destination IP, the real's MAC as destination MAC."""
    mac = lab.real_macs()["real1"]
    for vip in (lab.vip4, lab.vip6):
        lab.client_exec(
            ["ip", "neigh", "replace", vip, "lladdr", mac, "dev", IFNAME, "nud", "permanent"]
        )
    try:
        assert lab.curl(f"http://{lab.vip4}/") == "real1\n"
        assert lab.curl(f"http://[{lab.vip6}]/") == "real1\n"
        # UDP replies come from the VIP (a connected socket only accepts those).
        assert lab.udp(lab.vip4) == "real1\n"
        assert lab.udp(lab.vip6) == "real1\n"
    finally:
        for vip in (lab.vip4, lab.vip6):
            lab.client_exec(["ip", "neigh", "del", vip, "dev", IFNAME], check=False)


# --------------------------------------------------------------------------- XDP_TX


def _forward_to_real_insns(vip4: str, real_mac: str, lb_mac: str) -> List[bytes]:
    """IPv4 to *vip4*: rewrite MACs (dst real, src LB) and XDP_TX; anything else XDP_PASS."""
    i = libbpf.insn
    rm, lm = _mac_bytes(real_mac), _mac_bytes(lb_mac)

    def s32(b: bytes) -> int:
        return int(struct.unpack("<i", b)[0])

    def u16(b: bytes) -> int:
        return int(struct.unpack("<H", b)[0])

    return [
        i(0x61, 2, 1, 0),  # r2 = ctx->data
        i(0x61, 3, 1, 4),  # r3 = ctx->data_end
        i(0xBF, 4, 2),  # r4 = r2
        i(0x07, 4, imm=34),  # r4 += 14 + 20
        i(0x2D, 4, 3, off=10),  # if r4 > r3 goto pass
        i(0x69, 5, 2, 12),  # r5 = h_proto
        i(0x56, 5, off=8, imm=u16(b"\x08\x00")),  # if w5 != ETH_P_IP goto pass
        i(0x61, 5, 2, 30),  # r5 = iph->daddr
        i(0x56, 5, off=6, imm=s32(ipaddress.IPv4Address(vip4).packed)),  # != VIP: pass
        i(0x62, 2, off=0, imm=s32(rm[:4])),  # h_dest = real
        i(0x6A, 2, off=4, imm=u16(rm[4:])),
        i(0x62, 2, off=6, imm=s32(lm[:4])),  # h_source = LB
        i(0x6A, 2, off=10, imm=u16(lm[4:])),
        i(0xB7, 0, imm=libbpf.XDP_TX),
        i(0x95),
        i(0xB7, 0, imm=libbpf.XDP_PASS),  # pass:
        i(0x95),
    ]


def test_xdp_tx_from_lb_reaches_real_and_reply_bypasses_lb(lab: Lab) -> None:
    """A two-line 'load balancer' in native XDP on the LB: the lab carries XDP_TX (DSR)."""
    real = lab.reals[0]
    lb_mac = lab.lb_mac
    flush_client_neigh(lab, lab.vip4)
    with in_netns(lab.ns_lb):
        lb_if = socket.if_nametoindex(IFNAME)
        attach_insns(lb_if, _forward_to_real_insns(lab.vip4, real.mac, lb_mac))
    try:
        with packet_socket(lab.ns_client) as cap:
            assert lab.curl(f"http://{lab.vip4}/") == f"{real.name}\n"
            frames = _collect(cap, 0.05)
        assert lab.udp(lab.vip4) == f"{real.name}\n"
        assert client_neigh_mac(lab, lab.vip4) == lb_mac  # the client sends to the LB
        vip = ipaddress.IPv4Address(lab.vip4).packed
        from_vip = [f for f in frames if f[12:14] == b"\x08\x00" and f[26:30] == vip]
        assert from_vip and {_mac_str(f[6:12]) for f in from_vip} == {real.mac}  # DSR
        # Without an XDP program on the LB's bridge-side peer, XDP_TX frames are lost.
        with in_netns(lab.ns_br):
            peer = socket.if_nametoindex("v-lb")
            libbpf.xdp_detach(peer, "native")
        try:
            with pytest.raises(socket.timeout):
                lab.udp(lab.vip4, timeout=0.5)
        finally:
            with in_netns(lab.ns_br):
                attach_stub(peer)
        assert lab.udp(lab.vip4) == f"{real.name}\n"
    finally:
        with in_netns(lab.ns_lb):
            libbpf.xdp_detach(lb_if, "native")


# --------------------------------------------------------------------------- lifecycle


def _netns_ids(lab: Lab) -> Set[int]:
    return {os.stat(f"{NETNS_DIR}/{n}").st_ino for n in lab.existing_namespaces()}


def _leftovers(lab: Lab, ns_ids: Set[int]) -> List[str]:
    """Namespaces, state dir and processes (by state-dir path or netns) of a lab."""
    out = []
    ns = [n for n in os.listdir(NETNS_DIR) if n.startswith(lab.prefix + "-")]
    if ns:
        out.append(f"namespaces {ns}")
    if os.path.exists(lab.state_dir):
        out.append(f"state dir {lab.state_dir}")
    marker = lab.state_dir + "/"
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            in_ns = os.stat(f"/proc/{pid}/ns/net").st_ino in ns_ids
        except OSError:
            continue
        if (marker in cmd or in_ns) and not zombie:
            out.append(f"process {pid}: {cmd}")
    return out


def test_up_is_idempotent(lab: Lab) -> None:
    def nginx_pid() -> str:
        with open(os.path.join(lab.real_dir("real1"), "nginx.pid")) as f:
            return f.read()

    pid_before = nginx_pid()
    t0 = time.monotonic()
    lab.up()
    assert time.monotonic() - t0 < 0.5
    assert nginx_pid() == pid_before


def test_up_down_leave_nothing_behind() -> None:
    lab = Lab(LabSpec(prefix=f"{SESSION_PREFIX}d", n_reals=3))
    try:
        t0 = time.monotonic()
        lab.up()
        took = time.monotonic() - t0
        assert lab.curl(f"http://{lab.real_ip4('real3')}/") == "real3\n"
        # A stray process in a lab namespace goes too (found by netns, not by pid file).
        stray = subprocess.Popen(nsenter_cmd(lab.ns_client, ["sleep", "60"]))
        time.sleep(0.05)
        assert stray.pid in pids_in_netns([lab.ns_client])[lab.ns_client]
        ns_ids = _netns_ids(lab)
        assert len(ns_ids) == len(lab.namespaces)
        assert _leftovers(lab, ns_ids)  # sanity: the check does see a live lab
    finally:
        lab.down()
    assert stray.wait(timeout=5) != 0
    assert _leftovers(lab, ns_ids) == []
    lab.down()  # idempotent
    assert _leftovers(lab, ns_ids) == []
    assert took < 3.0, f"up() took {took:.2f}s"


@pytest.mark.parametrize(
    "step", ["_create_links", "_attach_peer_xdp", "_start_services", "_write_state"]
)
def test_failed_up_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    lab = Lab(LabSpec(prefix=f"{SESSION_PREFIX}f", n_reals=2))
    original = getattr(Lab, step)
    ns_ids: Set[int] = set()

    def broken(self: Lab) -> None:
        original(self)  # do the work, then fail: the most to clean up
        ns_ids.update(_netns_ids(self))
        raise RuntimeError(f"injected failure after {step}")

    monkeypatch.setattr(Lab, step, broken)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            lab.up()
        assert len(ns_ids) == len(lab.namespaces)
        assert _leftovers(lab, ns_ids) == []
    finally:
        monkeypatch.undo()
        lab.down()
    assert _leftovers(lab, ns_ids) == []


def test_cli_status_and_config(lab: Lab) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    }
    run = [sys.executable, "-m", "xdplbd.lab"]
    st = subprocess.run(
        [*run, "status", "--prefix", lab.prefix, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["up"] is True
    cfg = subprocess.run(
        [*run, "config", "--prefix", lab.prefix],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(cfg.stdout) == lab.config()
    gone = subprocess.run(
        [*run, "status", "--prefix", f"{lab.prefix}none"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert gone.returncode == 1 and "down" in gone.stdout
