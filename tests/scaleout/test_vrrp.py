"""Two LB nodes with keepalived (VRRP only) and the same xdplb config: the master fails,
the backup takes the VIP, established connections keep their real (issue 15)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.scaleout.conftest import lab_fixture, prefix, record
from xdplbd.lab.demo import Wrk, wait_for
from xdplbd.lab.scaleout import VRRP_VIP, LongConns, ScaleLab, ScaleSpec, url_of


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[ScaleLab]:
    yield from lab_fixture(request, ScaleSpec(prefix=prefix("v"), n_lbs=0, n_reals=3, vrrp=True))


def test_the_shipped_keepalived_example_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "etc/xdplb/keepalived.conf.example"
    log = tmp_path / "check.log"
    r = subprocess.run(["keepalived", "--vrrp", f"--config-test={log}", "-f", str(example)],
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout, r.stderr, log.read_text() if log.exists() else "")
    assert "vrrp_instance" in example.read_text()


def test_same_config_on_both_nodes(lab: ScaleLab) -> None:
    va, vb = (lab.daemons[n] for n in ("va", "vb"))
    with open(va.config_path) as a, open(vb.config_path) as b:
        assert a.read() == b.read()


def test_both_nodes_see_every_real_up(lab: ScaleLab) -> None:
    """The VIP is health-checked (DSR-aware TCP) on both nodes: the master, which holds
    the VIP on its own eth0, probes from its node address too, and sees the reals up."""
    for n in ("va", "vb"):
        def up(n: str = n) -> bool:
            st = json.loads(lab.daemons[n].cli("status", "--json").stdout)
            v = next(v for v in st["vips"] if v["vip"] == VRRP_VIP)
            return v["failing_open"] is False and all(
                r["health"] == "up" and r["state"] == "active" for r in v["reals"])
        wait_for(up, 10, f"{n} to see every real of {VRRP_VIP} up")


def test_master_fails_backup_takes_the_vip_connections_keep_their_real(lab: ScaleLab) -> None:
    assert lab.vrrp_master() == "va"
    lc = LongConns(lab, VRRP_VIP, conns=24)
    wrk = Wrk(lab, url_of(VRRP_VIP), connections=8, duration=120, timeout=30)
    try:
        lc.start()
        wrk.start()
        time.sleep(1.0)
        on = lab.flows_by_node(0.5, VRRP_VIP)
        assert all(on.get(p) == {"va"} for p in lc.ports), on  # active/passive
        t0 = lab.kill("va")
        try:
            wait_for(lambda: lab.vrrp_master() == "vb", 10, "vb to take the VIP",
                     interval=0.005)
        except TimeoutError:
            raise AssertionError(f"vb never took the VIP; its keepalived:\n"
                                 f"{lab.keepalived_log('vb')}\nva's:\n"
                                 f"{lab.keepalived_log('va')}") from None
        takeover_s = time.monotonic() - t0
        time.sleep(2.5)
        now = lab.flows_by_node(0.5, VRRP_VIP)
        rep, wr = lc.stop(), wrk.stop()
    finally:
        lc.kill()
        wrk.kill()
    record("vrrp failover", takeover_s=round(takeover_s, 3), conns=len(lc.ports),
           moved=len(rep.moved), failed=rep.failed, longest_stall_s=rep.longest_stall_s,
           wrk_requests=wr.requests, wrk_failed=wr.failed, wrk_errors=wr.errors)
    assert all(now.get(p) == {"vb"} for p in lc.ports), now
    assert rep.moved == [], rep.to_dict()
    # Every connection is answered again after the takeover; the failures, if any, are
    # counted and reported above (a few in the takeover window are expected).
    assert all(c.requests > c.failed for c in rep.conns)
