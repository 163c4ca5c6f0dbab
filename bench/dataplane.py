"""Data plane benchmarks: ns/packet per path and live-frames packets/s.

Every figure is reported next to a trivial MAC-swap XDP_TX program compiled
and loaded the same way (BCC) in the same run, as a ratio: these machines are
noisy, ratios travel. ns/packet is the kernel-reported test_run duration
(wall time would include XDP dispatcher attach/detach waits).
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from xdplbd import bpfsys, iface, loader, schema, xdp_stub
from xdplbd.dataplane import DataPlane
from xdplbd.model import Config, Real, Tunables, Vip, VipKey
from xdplbd.netns import in_netns
from xdplbd.plan import make_plan

TRIVIAL_SRC = b"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
int xdp_swap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}
"""

LB_MAC, CLIENT_MAC = "02:00:00:00:00:01", "02:00:00:00:00:99"
VIP = "10.3.0.100"
N_REALS = 16
REPEAT = 1_000_000
ROUNDS = 5
LIVE_PACKETS = 2_000_000


@dataclass
class Result:
    name: str
    ns: float
    ratio: float


def _frames() -> Dict[str, bytes]:
    e = Ether(src=CLIENT_MAC, dst=LB_MAC)
    return {
        "SYN to VIP": bytes(e / IP(src="10.3.1.1", dst=VIP) / TCP(sport=1234, dport=80, flags="S")),
        "established ACK": bytes(e / IP(src="10.3.1.1", dst=VIP) / TCP(sport=1235, dport=80,
                                                                       flags="A")),
        "UDP to VIP": bytes(e / IP(src="10.3.1.1", dst=VIP) / UDP(sport=1236, dport=53) / b"q"),
        "non-VIP TCP": bytes(e / IP(src="10.3.1.1", dst="10.3.0.50") / TCP(sport=1, dport=80)),
        "ARP": bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP)),
    }


def _compile_trivial() -> int:
    loader.ensure_kernel_headers()
    from bcc import BPF

    b = BPF(text=TRIVIAL_SRC)
    fd = os.dup(b.load_func(b"xdp_swap", BPF.XDP).fd)
    b.cleanup()
    return fd


def _ns(fd: int, frame: bytes) -> float:
    return float(bpfsys.test_run(fd, frame, repeat=REPEAT).duration_ns)


def _median_interleaved(fns: List[Callable[[], float]]) -> List[float]:
    """Run the candidates in turn, ROUNDS times, and keep each one's median."""
    samples: List[List[float]] = [[] for _ in fns]
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            samples[i].append(fn())
    return [statistics.median(s) for s in samples]


def _ring_memlock(dp: DataPlane, vip_id: int) -> int:
    raw = dp.maps["rings"].lookup(schema.U32.pack(vip_id))
    assert raw is not None
    fd = bpfsys.map_fd_by_id(schema.U32.unpack(raw[:4])[0])
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return 0


def _xdp_md(ifindex: int, frame_len: int) -> bytes:
    # struct xdp_md {data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex};
    # the kernel wants data_end == the frame's length.
    return struct.pack("<6I", 0, frame_len, 0, ifindex, 0, 0)


def _live_pps(fd: int, frame: bytes, ifindex: int) -> float:
    t0 = time.perf_counter()
    bpfsys.test_run(fd, frame, repeat=LIVE_PACKETS, flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES,
                    ctx=_xdp_md(ifindex, len(frame)))
    return LIVE_PACKETS / (time.perf_counter() - t0)


def run() -> Dict[str, object]:
    pid = os.getpid()
    pin_dir = f"/sys/fs/bpf/xdplb-bench-{pid}"
    netns = f"xdplbb-{pid}"
    t = Tunables()  # the defaults operators get
    prog = loader.load(pin_dir, t)
    trivial = _compile_trivial()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    dp = DataPlane(pin_dir, t)
    try:
        reals = tuple(Real(ipaddress.ip_address(f"10.3.0.{10 + i}"), f"02:00:00:03:00:{i:02x}")
                      for i in range(N_REALS))
        key = VipKey(ipaddress.ip_address(VIP), 80, "tcp")
        vips = (Vip(key, reals), Vip(VipKey(key.addr, 53, "udp"), reals))
        dp.apply(make_plan(dp.read_live(), Config(vips=vips, tunables=t)).ops)
        dp.set_settings(LB_MAC, t.udp_timeout)
        frames = _frames()
        # Warm the conntrack so "established ACK" is a hit on every repeat.
        bpfsys.test_run(prog.fd, frames["established ACK"])
        bpfsys.test_run(prog.fd, frames["UDP to VIP"])

        subprocess.run(["ip", "-n", netns, "link", "add", "b0", "type", "veth", "peer", "name",
                        "b1"], check=True)
        for dev in ("b0", "b1"):
            subprocess.run(["ip", "-n", netns, "link", "set", dev, "up"], check=True)
        with in_netns(netns):
            b0, b1 = iface.ifindex("b0"), iface.ifindex("b1")
            # Keep both programs in the XDP dispatcher, and give the peer an XDP
            # program: veth delivers XDP_TX frames only to a peer that has one.
            bpfsys.xdp_attach(b0, prog.fd, "native")
            xdp_stub.attach(b1, xdp_stub.load(xdp_stub.XDP_DROP))

            results: List[Result] = []
            for name, frame in frames.items():
                ours, base = _median_interleaved([lambda f=frame: _ns(prog.fd, f),
                                                  lambda f=frame: _ns(trivial, f)])
                results.append(Result(name, ours, ours / base))
            base_ns = _median_interleaved([lambda: _ns(trivial, frames["ARP"])])[0]

            live = frames["established ACK"]
            ours_pps, base_pps = _median_interleaved([lambda: _live_pps(prog.fd, live, b0),
                                                      lambda: _live_pps(trivial, live, b0)])
        memlock = _ring_memlock(dp, dp.read_live().vips[0].id)
        return {
            "trivial_ns": base_ns,
            "paths": results,
            "live_pps": ours_pps,
            "live_trivial_pps": base_pps,
            "ring_bytes": memlock,
            "ring_size": t.ring_size,
        }
    finally:
        dp.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        os.close(trivial)
        os.close(prog.fd)
        for name in os.listdir(pin_dir):
            os.unlink(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)


TARGETS = {"SYN to VIP": 4.0, "established ACK": 2.5, "non-VIP TCP": 1.5, "ARP": 1.5}


def report(r: Dict[str, object]) -> str:
    lines = [
        "## Data plane (BPF_PROG_TEST_RUN, repeat 1e6, median of 5 interleaved rounds)",
        "",
        f"Baseline: trivial MAC-swap XDP_TX program, {r['trivial_ns']:.1f} ns/packet.",
        "",
        "| path | ns/packet | x trivial | target |",
        "|---|---:|---:|---:|",
    ]
    for p in r["paths"]:  # type: ignore[attr-defined]
        target = TARGETS.get(p.name)
        lines.append(f"| {p.name} | {p.ns:.1f} | {p.ratio:.2f} | "
                     (f"<= {target:.1f}" if target else "-") + " |")
    live, base = float(r["live_pps"]), float(r["live_trivial_pps"])  # type: ignore[arg-type]
    lines += [
        "",
        "| live frames through a veth (established flow) | packets/s | x trivial | target |",
        "|---|---:|---:|---:|",
        f"| xdplb | {live / 1e6:.2f} M | {live / base:.2f} | >= 0.85 |",
        f"| trivial XDP_TX | {base / 1e6:.2f} M | 1.00 | |",
        "",
        f"Ring memory per VIP at M={r['ring_size']}: {int(r['ring_bytes']) // 1024} KB "
        "(kernel memlock of one inner array; target <= 256 KB).",
    ]
    return "\n".join(lines)
