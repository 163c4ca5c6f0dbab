"""`xdplb status --json`, `stats --json` and `explain` against the live maps."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any, Dict, List, Tuple

from tests.tools.conftest import (
    TEST_TCP_PORT,
    TEST_UDP_PORT,
    TEST_VIP,
    TUNABLES,
    Driver,
    LabDaemon,
)
from xdplbd.cli.commands import explain_data
from xdplbd.core import ledger, schema
from xdplbd.core.model import VipKey
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import store_flow
from xdplbd.kernel.jiffies import now_tick
from xdplbd.kernel.snapshot import stats_json, take

# Schema 1 only grows: "announce" (issue 15) and "warnings" (issue 14) were added.
STATUS_KEYS = {"schema", "daemon", "dataplane", "config", "reloads", "last_reload", "vips",
               "announce", "warnings"}


def _maps_vips(d: LabDaemon) -> List[Dict[str, Any]]:
    with d.dataplane() as dp:
        return [
            {"vip": str(v.key.addr), "port": v.key.port, "protocol": v.key.proto,
             "vip_id": v.id, "ring_digest": f"{v.ring_digest:016x}", "failing_open": False,
             "announce": None,
             "reals": [{"ip": str(b.ip), "mac": b.mac, "weight": b.weight,
                        "state": "active" if b.weight else "draining", "backend_id": b.id,
                        "health": "unchecked", "reason": None, "health_since": None,
                        "last_check": None}
                       for b in v.backends]}
            for v in dp.read_live().vips
        ]


def test_status_json_matches_state_and_maps(lab_daemon: LabDaemon) -> None:
    d = lab_daemon
    r = d.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == STATUS_KEYS
    assert data["schema"] == 1
    st = d.state()
    assert data["daemon"] == {"running": True, "pid": d.proc.pid if d.proc else None,
                              "version": st["version"], "started_at": st["started_at"]}
    dp = data["dataplane"]
    assert dp["pinned"] and dp["attached"]
    assert (dp["interface"], dp["mode"]) == ("eth0", "native")
    assert dp["prog_id"] == st["prog_id"] and dp["prog_tag"] == st["prog_tag"]
    assert dp["source_digest"] == st["source_digest"]
    assert data["config"] == {"path": d.config, "digest": st["config_digest"],
                              "generation": st["generation"], "applied_at": st["applied_at"]}
    assert data["reloads"] == st.get("reloads", 0)
    assert data["vips"] == _maps_vips(d)
    assert len(data["vips"]) == len(d.doc["vips"])
    configured = {(v["vip"], v["port"], v["protocol"]): {(r["ip"], r["weight"])
                                                         for r in v["reals"]}
                  for v in d.doc["vips"]}
    shown = {(v["vip"], v["port"], v["protocol"]): {(r["ip"], r["weight"]) for r in v["reals"]}
             for v in data["vips"]}
    assert shown == configured
    # The text form says the same, and exit 0 means "running".
    text = d.cli("status")
    assert text.returncode == 0
    assert f"running, pid {d.proc.pid if d.proc else 0}" in text.stdout
    assert "attached to eth0 (native XDP" in text.stdout
    assert f"{TEST_VIP}:{TEST_TCP_PORT}/tcp" in text.stdout


def test_status_from_another_netns_sees_no_attachment(lab_daemon: LabDaemon) -> None:
    """XDP attachments are per network namespace: from the host's, status must not
    claim one it cannot see (the VIPs still come from the pins)."""
    data = json.loads(lab_daemon.cli("status", "--json").stdout)
    from tests.tools.conftest import run_cli

    other = json.loads(run_cli(None, "status", "--json", "--pin-dir", lab_daemon.pin_dir,
                               "--state-dir", lab_daemon.state_dir).stdout)
    assert other["dataplane"]["attached"] is False
    assert other["daemon"]["running"] is True
    assert other["vips"] == data["vips"]


def _send(driver: Driver, flows: List[Tuple[str, int, str]], count: int) -> Dict[str, int]:
    """`count` frames of each flow; returns real IP -> frames it got."""
    got: Dict[str, int] = {}
    for src, sport, proto in flows:
        port = TEST_TCP_PORT if proto == "tcp" else TEST_UDP_PORT
        frame = driver.frame(src, sport, TEST_VIP, port, proto)
        for _ in range(count):
            action, real = driver.run(frame)
            assert action == "tx" and real
            got[real] = got.get(real, 0) + 1
    return got


def _vip_stats(stats: Dict[str, Any], port: int, proto: str) -> Dict[str, Any]:
    return next(v for v in stats["vips"]
                if (v["vip"], v["port"], v["protocol"]) == (TEST_VIP, port, proto))


def test_stats_json_counts_exactly_and_matches_maps(lab_daemon: LabDaemon,
                                                   driver: Driver) -> None:
    d = lab_daemon
    before = json.loads(d.cli("stats", "--json").stdout)
    assert before["schema"] == 1
    tcp_flows = [("10.99.0.2", 41000 + i, "tcp") for i in range(8)]
    udp_flows = [("10.99.0.2", 42000 + i, "udp") for i in range(5)]
    frame_len = len(driver.frame("10.99.0.2", 1, TEST_VIP, 1, "tcp"))
    udp_len = len(driver.frame("10.99.0.2", 1, TEST_VIP, 1, "udp"))
    tcp_got = _send(driver, tcp_flows, 7)
    udp_got = _send(driver, udp_flows, 3)
    r = d.cli("stats", "--json")
    assert r.returncode == 0, r.stderr
    after = json.loads(r.stdout)

    for port, proto, got, n, size in ((TEST_TCP_PORT, "tcp", tcp_got, 56, frame_len),
                                      (TEST_UDP_PORT, "udp", udp_got, 15, udp_len)):
        b, a = _vip_stats(before, port, proto), _vip_stats(after, port, proto)
        assert a["packets"] - b["packets"] == n
        assert a["bytes"] - b["bytes"] == n * size
        per_real = {r["ip"]: r["packets"] for r in a["reals"]}
        per_real_before = {r["ip"]: r["packets"] for r in b["reals"]}
        assert {ip: per_real[ip] - per_real_before.get(ip, 0) for ip in per_real
                if per_real[ip] != per_real_before.get(ip, 0)} == got
        assert sum(r["bytes"] for r in a["reals"]) - sum(r["bytes"] for r in b["reals"]) \
            == n * size
    # Every test_run frame here was a TCP non-SYN or UDP packet to a VIP: forwarded.
    delta = {k: after["outcomes"][k]["packets"] - before["outcomes"][k]["packets"]
             for k in ("tx", "ct_hit", "ct_miss", "ct_insert", "drop", "no_real")}
    assert delta["tx"] >= 71 and delta["drop"] == 0 and delta["no_real"] == 0
    assert delta["ct_miss"] >= 13  # first frame of each new flow (more if real traffic ran)

    # The same numbers as the maps themselves, read afresh: a VIP's total is
    # its reals' totals, its drops (vip_stats, per-CPU sums) and the counts
    # of reals that left it (vip_ledger).
    with d.dataplane() as dp:
        direct = stats_json(take(dp))
        for v in after["vips"]:
            key = schema.U32.pack(v["vip_id"])
            raw = dp.maps["vip_stats"].lookup(key)
            assert raw is not None
            drops = schema.sum_counters(raw, dp.maps["vip_stats"].ncpu)
            departed = ledger.vip_entry(dp.maps["vip_ledger"].lookup(key)).departed
            reals = (sum(r["packets"] for r in v["reals"]), sum(r["bytes"] for r in v["reals"]))
            assert (v["packets"], v["bytes"]) == (reals[0] + drops[0] + departed[0],
                                                  reals[1] + drops[1] + departed[1])
    for v_cli, v_map in zip(after["vips"], direct["vips"]):
        if v_cli["vip"] == TEST_VIP:
            assert v_cli == v_map


def _real_for(driver: Driver, src: str, sport: int, port: int, proto: str,
              flags: str = "A") -> str:
    action, real = driver.run(driver.frame(src, sport, TEST_VIP, port, proto, flags=flags))
    assert action == "tx" and real
    return real


def _explain(d: LabDaemon, src: str, sport: int, port: int, proto: str,
             syn: bool = False) -> Dict[str, Any]:
    return explain_data(d.pin_dir, d.state_dir, src, sport, TEST_VIP, port, proto, syn)


def test_explain_cli_agrees_with_the_data_plane(lab_daemon: LabDaemon, driver: Driver) -> None:
    d = lab_daemon
    sport = 43000
    # A flow never seen: the ring decides, and the packet goes where explain says.
    r = d.cli("explain", "10.99.0.7", str(sport), TEST_VIP, str(TEST_TCP_PORT), "tcp", "--json")
    assert r.returncode == 0, r.stderr
    before = json.loads(r.stdout)
    assert (before["verdict"], before["reason"], before["conntrack"]) == ("tx", "ring", "absent")
    assert before["ring_size"] == TUNABLES["ring_size"]
    assert 0 <= before["ring_slot"] < TUNABLES["ring_size"]
    sent = _real_for(driver, "10.99.0.7", sport, TEST_TCP_PORT, "tcp")
    assert sent == before["real"]
    # Now conntrack holds the flow, and explain says so.
    after = json.loads(d.cli("explain", "10.99.0.7", str(sport), TEST_VIP,
                             str(TEST_TCP_PORT), "tcp", "--json").stdout)
    assert (after["reason"], after["conntrack"], after["real"]) == ("conntrack", "hit", sent)
    text = d.cli("explain", "10.99.0.7", str(sport), TEST_VIP, str(TEST_TCP_PORT), "tcp")
    assert f"XDP_TX to real {sent}" in text.stdout and "conntrack entry" in text.stdout
    # Not a VIP port: passes.
    miss = json.loads(d.cli("explain", "10.99.0.7", str(sport), TEST_VIP, "9", "tcp",
                            "--json").stdout)
    assert (miss["verdict"], miss["reason"]) == ("pass", "not_a_vip")
    action, _ = driver.run(driver.frame("10.99.0.7", sport, TEST_VIP, 9, "tcp"))
    assert action == "pass"


def test_explain_agrees_for_many_flows(lab_daemon: LabDaemon, driver: Driver) -> None:
    """Ring decisions over random flows (both reals get some), then conntrack ones."""
    rng = random.Random(7)
    d = lab_daemon
    reals = set()
    for i in range(60):
        proto = "tcp" if i % 2 else "udp"
        port = TEST_TCP_PORT if proto == "tcp" else TEST_UDP_PORT
        src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        sport = rng.randrange(1024, 65536)
        want = _explain(d, src, sport, port, proto)
        assert want["reason"] == "ring", want
        assert _real_for(driver, src, sport, port, proto) == want["real"]
        assert _explain(d, src, sport, port, proto)["reason"] == "conntrack"
        reals.add(want["real"])
    assert len(reals) == 2


def test_explain_follows_conntrack_over_the_ring_and_syn_over_conntrack(
        lab_daemon: LabDaemon, driver: Driver) -> None:
    d = lab_daemon
    src, sport = "10.99.0.9", 44000
    ring_real = _explain(d, src, sport, TEST_TCP_PORT, "tcp")["real"]
    other = next(ip for ip in d.mac_to_ip.values() if ip != ring_real)
    key = VipKey(ipaddress.ip_address(TEST_VIP), TEST_TCP_PORT, "tcp")
    flow = (ipaddress.ip_address(src), key.addr, sport, key.port, "tcp")
    with d.dataplane() as dp:
        bid = next(b.id for v in dp.read_live().vips if v.key == key for b in v.backends
                   if str(b.ip) == other)
        # Point the flow at the other real, as if it had been pinned there earlier.
        store_flow(dp, *flow, backend_id=bid, tick=now_tick())
        e = _explain(d, src, sport, TEST_TCP_PORT, "tcp")
        assert (e["reason"], e["real"], e["backend_id"]) == ("conntrack", other, bid)
        assert _real_for(driver, src, sport, TEST_TCP_PORT, "tcp") == other
        # A SYN skips conntrack: back to the ring's choice.
        e = _explain(d, src, sport, TEST_TCP_PORT, "tcp", syn=True)
        assert (e["reason"], e["conntrack"], e["real"]) == ("ring", "skipped (SYN)", ring_real)
        assert _real_for(driver, src, sport, TEST_TCP_PORT, "tcp", flags="S") == ring_real
        # A stale entry (a backend id of another VIP) is ignored: ring again.
        foreign = next(b.id for v in dp.read_live().vips if v.key != key for b in v.backends)
        store_flow(dp, *flow, backend_id=foreign, tick=now_tick())
        e = _explain(d, src, sport, TEST_TCP_PORT, "tcp")
        assert (e["reason"], e["conntrack"], e["real"]) == ("ring", "stale", ring_real)
        assert _real_for(driver, src, sport, TEST_TCP_PORT, "tcp") == ring_real


def test_explain_udp_entry_idle_past_the_timeout_is_rehashed(lab_daemon: LabDaemon,
                                                             driver: Driver) -> None:
    d = lab_daemon
    src, sport = "10.99.0.10", 45000
    ring_real = _explain(d, src, sport, TEST_UDP_PORT, "udp")["real"]
    other = next(ip for ip in d.mac_to_ip.values() if ip != ring_real)
    key = VipKey(ipaddress.ip_address(TEST_VIP), TEST_UDP_PORT, "udp")
    flow = (ipaddress.ip_address(src), key.addr, sport, key.port, "udp")
    with d.dataplane() as dp:
        live = {v.key: v for v in dp.read_live().vips}
        bid = next(b.id for b in live[key].backends if str(b.ip) == other)
        now = now_tick()
        store_flow(dp, *flow, backend_id=bid, tick=now)
        e = _explain(d, src, sport, TEST_UDP_PORT, "udp")
        assert (e["reason"], e["real"]) == ("conntrack", other)
        assert _real_for(driver, src, sport, TEST_UDP_PORT, "udp") == other
        stale = now - TUNABLES["udp_timeout"] - 5  # ticks are ~1.07 s
        store_flow(dp, *flow, backend_id=bid, tick=stale)
        e = _explain(d, src, sport, TEST_UDP_PORT, "udp")
        assert (e["reason"], e["conntrack"], e["real"]) == ("ring", "expired", ring_real)
        assert _real_for(driver, src, sport, TEST_UDP_PORT, "udp") == ring_real


def test_stats_and_explain_fail_clearly_without_pins(lab_daemon: LabDaemon) -> None:
    from tests.tools.conftest import run_cli

    for cmd in (["stats", "--json"], ["explain", "10.0.0.1", "1", "10.0.0.2", "80", "tcp"],
                ["top", "--once"]):
        r = run_cli(None, *cmd, "--pin-dir", "/sys/fs/bpf/xdplb-none-here", "--state-dir",
                    "/nonexistent")
        assert r.returncode == 5  # EXIT_NO_PINS (docs/bad-input.md)
        assert "no data plane pinned under /sys/fs/bpf/xdplb-none-here" in r.stderr
    st = run_cli(None, "status", "--json", "--pin-dir", "/sys/fs/bpf/xdplb-none-here",
                 "--state-dir", "/nonexistent")
    assert st.returncode == 3  # not running
    data = json.loads(st.stdout)
    assert data["daemon"] == {"running": False, "pid": None, "version": None,
                              "started_at": None}
    assert not data["dataplane"]["pinned"] and not data["dataplane"]["attached"]
    assert data["vips"] == [] and data["last_reload"] is None
    bad = run_cli(None, "explain", "10.0.0.1", "1", "fd00::1", "80", "tcp", "--pin-dir",
                  lab_daemon.pin_dir)
    assert bad.returncode == 2 and "same IP version" in bad.stderr
    assert libbpf.possible_cpus() >= 1
