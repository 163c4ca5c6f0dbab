"""The Prometheus exporter inside xdplbd: scraped over HTTP, parsed with
prometheus-client's own text parser, compared with the maps."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Dict, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tools.conftest import (
    METRICS_LISTEN,
    TEST_TCP_PORT,
    TEST_UDP_PORT,
    TEST_VIP,
    TUNABLES,
    Driver,
    LabDaemon,
    write_config,
)
from xdplbd.kernel.snapshot import Snapshot, scan_flows, take
from xdplbd.lab.topology import in_netns

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(ns: str, listen: str = METRICS_LISTEN, wait: float = 5.0) -> Tuple[str, str]:
    """(body, content type) of GET /metrics from inside netns `ns`.

    The exporter starts just after the daemon reports ready (and restarts after
    a reload that moves it): retry a refused connection for up to `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            # The socket is created inside in_netns, so it lives in the LB's netns.
            with in_netns(ns), urllib.request.urlopen(f"http://{listen}/metrics",
                                                      timeout=10) as resp:
                return resp.read().decode(), resp.headers.get("Content-Type", "")
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or \
                    time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def parse(body: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def vl(vip: str, port: int, proto: str, **more: str) -> Tuple[Tuple[str, str], ...]:
    return tuple(sorted({"vip": vip, "port": str(port), "proto": proto, **more}.items()))


def _between(x: float, a: Optional[int], b: Optional[int]) -> bool:
    assert a is not None and b is not None
    return min(a, b) <= x <= max(a, b)


def _maps(d: LabDaemon) -> Snapshot:
    with d.dataplane() as dp:
        return take(dp, scan_flows(dp))


def test_metrics_equal_the_map_sums(lab_daemon: LabDaemon, driver: Driver) -> None:
    d = lab_daemon
    for i in range(6):  # some known traffic, and flows in conntrack
        for proto, port in (("tcp", TEST_TCP_PORT), ("udp", TEST_UDP_PORT)):
            assert driver.run(driver.frame("10.99.0.2", 46000 + i, TEST_VIP, port, proto))[0] \
                == "tx"
    before = _maps(d)
    body, ctype = scrape(d.ns)
    after = _maps(d)
    assert ctype.startswith("text/plain")
    m = parse(body)

    # Names follow the conventions: counters end in _total, the unit is in the name.
    assert ("xdplb_vip_packets_total", vl(TEST_VIP, TEST_TCP_PORT, "tcp")) in m
    for v in after.vips:
        labels = vl(str(v.key.addr), v.key.port, v.key.proto)
        vb = next(x for x in before.vips if x.key == v.key)
        if str(v.key.addr) == TEST_VIP:  # no real traffic: exactly the maps
            assert m[("xdplb_vip_packets_total", labels)] == v.packets == vb.packets
            assert m[("xdplb_vip_bytes_total", labels)] == v.bytes
        else:
            assert vb.packets <= m[("xdplb_vip_packets_total", labels)] <= v.packets
        for r in v.reals:
            rl = vl(str(v.key.addr), v.key.port, v.key.proto, real=r.ip)
            rb = next(x for x in vb.reals if x.ip == r.ip)
            assert rb.packets <= m[("xdplb_real_packets_total", rl)] <= r.packets
            assert rb.bytes <= m[("xdplb_real_bytes_total", rl)] <= r.bytes
            assert m[("xdplb_real_weight", rl)] == r.weight
            if str(v.key.addr) == TEST_VIP:
                assert m[("xdplb_real_packets_total", rl)] == r.packets
                # (a UDP entry may age out between two readings: bounds, not equality)
                assert _between(m[("xdplb_real_tracked_flows", rl)], rb.flows, r.flows)
        if str(v.key.addr) == TEST_VIP:
            assert _between(m[("xdplb_vip_tracked_flows", labels)], vb.flows, v.flows)
            assert v.flows and v.flows >= 6
    for name, (p, b) in after.outcomes.items():
        pb, bb = before.outcomes[name]
        assert pb <= m[("xdplb_outcome_packets_total", (("outcome", name),))] <= p
        assert bb <= m[("xdplb_outcome_bytes_total", (("outcome", name),))] <= b
    assert m[("xdplb_conntrack_capacity", ())] == TUNABLES["conntrack_size"]
    entries = m[("xdplb_conntrack_entries", ())]
    assert before.conntrack_entries is not None and after.conntrack_entries is not None
    assert min(before.conntrack_entries, after.conntrack_entries) <= entries <= max(
        before.conntrack_entries, after.conntrack_entries)

    st = d.state()
    assert m[("xdplb_config_generation", ())] == st["generation"]
    info = [k for k in m if k[0] == "xdplb_build_info"]
    assert len(info) == 1 and dict(info[0][1])["source_digest"] == st["source_digest"]
    assert dict(info[0][1])["prog_tag"] == st["prog_tag"]
    assert m[("xdplb_dataplane_attached", (("interface", "eth0"), ("mode", "native")))] == 1
    assert m[("process_resident_memory_bytes", ())] > 0


def test_reloads_are_counted_by_result_and_listen_follows_the_config(
        lab_daemon: LabDaemon) -> None:
    d = lab_daemon
    m0 = parse(scrape(d.ns)[0])
    n = int(d.state().get("reloads", 0))
    ok0 = m0[("xdplb_reloads_total", (("result", "ok"),))]
    rej0 = m0[("xdplb_reloads_total", (("result", "rejected"),))]
    assert ok0 + rej0 == n

    # A broken config (a typo'd key) is rejected: counted, generation unchanged.
    bad = dict(d.doc, vipz=[])
    write_config(d.config, bad)
    st = d.wait_reloads(n + 1)
    assert st["last_reload"]["result"] == "rejected"
    m1 = parse(scrape(d.ns)[0])
    assert m1[("xdplb_reloads_total", (("result", "rejected"),))] == rej0 + 1
    assert m1[("xdplb_reloads_total", (("result", "ok"),))] == ok0
    assert m1[("xdplb_last_reload_success", ())] == 0
    assert m1[("xdplb_config_generation", ())] == m0[("xdplb_config_generation", ())]
    assert abs(m1[("xdplb_last_reload_timestamp_seconds", ())] - time.time()) < 60
    # status shows the same last reload.
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["reloads"] == n + 1
    lr = status["last_reload"]
    assert (lr["result"], lr["trigger"]) == ("rejected", "file change") and "vipz" in lr["error"]
    assert "rejected" in d.cli("status").stdout

    # A good one that moves the exporter to another port.
    moved = d.config_doc(metrics="127.0.0.1:9111")
    write_config(d.config, moved)
    st = d.wait_reloads(n + 2)
    assert st["last_reload"]["result"] == "ok", st
    m2 = parse(scrape(d.ns, "127.0.0.1:9111")[0])
    assert m2[("xdplb_reloads_total", (("result", "ok"),))] == ok0 + 1
    assert m2[("xdplb_last_reload_success", ())] == 1
    assert m2[("xdplb_config_generation", ())] == st["generation"]
    with pytest.raises(urllib.error.URLError):
        scrape(d.ns, METRICS_LISTEN, wait=0)

    # And back, for the other tests.
    write_config(d.config, d.doc)
    d.wait_reloads(n + 3)
    scrape(d.ns)
