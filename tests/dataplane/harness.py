"""Drive the real data plane through BPF_PROG_TEST_RUN (no mocks)."""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, Sequence, Tuple

from xdplbd.core import schema
from xdplbd.core.model import Config, Real, Tunables, Vip, VipKey
from xdplbd.core.plan import make_plan
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.loader import Program

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
ACTIONS = {XDP_ABORTED: "aborted", XDP_DROP: "drop", XDP_PASS: "pass", XDP_TX: "tx"}

TEST_TUNABLES = Tunables(
    max_vips=64, max_reals=256, conntrack_size=262144, ring_size=65537, udp_timeout=30
)
LB_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:99"


def real(ip: str, mac: str, weight: int = 1) -> Real:
    return Real(ipaddress.ip_address(ip), mac, weight)


def vip(addr: str, port: int, proto: str, reals: Iterable[Real]) -> Vip:
    return Vip(VipKey(ipaddress.ip_address(addr), port, proto), tuple(reals))


class DataPlaneHarness(DataPlane):
    def __init__(self, program: Program, pin_dir: str) -> None:
        super().__init__(pin_dir, TEST_TUNABLES)
        self.program = program

    def reset(self, lb_mac: str) -> None:
        self.configure([])
        self.flush_conntrack()
        for name in ("vip_stats", "backend_stats", "real_ledger", "vip_ledger", "path_stats"):
            m = self.maps[name]
            for i in range(m.info.max_entries):
                m.update(schema.U32.pack(i), bytes(m.read_size))
        self.set_settings(lb_mac, TEST_TUNABLES.udp_timeout)

    def configure(self, vips: Sequence[Vip]) -> int:
        """Apply a desired set of VIPs the way the daemon does; returns ops applied."""
        plan = make_plan(self.read_live(), Config(vips=tuple(vips), tunables=TEST_TUNABLES))
        return self.apply(plan.ops)

    def run(self, frame: bytes) -> Tuple[str, bytes]:
        r = libbpf.test_run(self.program.fd, frame)
        return ACTIONS.get(r.retval, str(r.retval)), r.data

    def vip_id(self, key: VipKey) -> int:
        for k, vip_id, _ in self.vip_entries():
            if k == key:
                return vip_id
        raise KeyError(str(key))

    def backend_id(self, key: VipKey, ip: str) -> int:
        vid = self.vip_id(key)
        for bid, b in self.backend_entries().items():
            if b.vip_id == vid and b.ip == ipaddress.ip_address(ip):
                return bid
        raise KeyError(ip)

    def snapshot(self) -> Dict[str, int]:
        return {k: v[0] for k, v in self.outcomes().items()}

    def delta(self, before: Dict[str, int]) -> Dict[str, int]:
        after = self.snapshot()
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}
