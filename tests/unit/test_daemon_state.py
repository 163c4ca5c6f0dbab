"""state.toml as the daemon writes it: a summary per VIP; every real only while few."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any, List

import pytest

from xdplbd.core.model import LiveBackend, LiveState, LiveVip, VipKey
from xdplbd.service import daemon
from xdplbd.service.statefile import read_state


def _live(n_vips: int, reals: int) -> LiveState:
    vips: List[LiveVip] = []
    bid = 1
    for i in range(n_vips):
        backends = []
        for j in range(reals):
            ip = ipaddress.ip_address(f"10.{1 + i // 200}.{i % 200}.{j + 1}")
            backends.append(LiveBackend(bid, ip, "02:00:00:00:00:01", j % 3))
            bid += 1
        addr = ipaddress.ip_address(f"10.0.{i // 200}.{i % 200 + 1}")
        vips.append(LiveVip(VipKey(addr, 80, "tcp"), i, 0xF00D + i, tuple(backends)))
    return LiveState(tuple(vips))


def _written(tmp_path: Any, live: LiveState) -> Any:
    d = daemon.Daemon(daemon.Options(state_dir=str(tmp_path)))
    d.dp = object()  # type: ignore[assignment]
    d.program = SimpleNamespace(info=SimpleNamespace(id=7, tag="ab"),  # type: ignore[assignment]
                                digest="cd")
    d._live = live
    d._write_state()
    return read_state(str(tmp_path))


@pytest.mark.parametrize("n_vips", [1, daemon.STATE_REALS_MAX // 4 + 1])
def test_state_summarises_each_vip_and_lists_reals_only_while_few(
    tmp_path: Any, n_vips: int
) -> None:
    st = _written(tmp_path, _live(n_vips, 4))
    v = st["vips"][0]
    assert (v["vip"], v["port"], v["protocol"], v["vip_id"]) == ("10.0.0.1", 80, "tcp", 0)
    assert v["ring_digest"] == "000000000000f00d"
    assert (v["active"], v["draining"]) == (2, 2)  # weights 0, 1, 2, 0
    few = n_vips * 4 <= daemon.STATE_REALS_MAX
    assert ("reals" in v) == few
    if few:
        assert v["reals"][0] == {"ip": "10.1.0.1", "mac": "02:00:00:00:00:01", "weight": 0,
                                 "backend_id": 1, "state": "draining"}
    assert len(st["vips"]) == n_vips and st["prog_id"] == 7
