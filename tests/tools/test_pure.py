"""The pure parts of the tools: rendering, explain, metric families, argv parsing;
plus the conntrack walk on a real (scratch) array map."""

from __future__ import annotations

import io
import ipaddress
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from xdplbd.cli.dashboard import Meta, human, render
from xdplbd.cli.status import render_text, status_data
from xdplbd.core import conntrack, schema
from xdplbd.core.config import config_digest
from xdplbd.core.conntrack import Entry
from xdplbd.core.explain import explain, infer_ring_size
from xdplbd.core.model import VipKey
from xdplbd.kernel import libbpf
from xdplbd.kernel.snapshot import RealSnap, Snapshot, VipSnap, count_flows, stats_json
from xdplbd.service import daemonize
from xdplbd.service.metrics import families, parse_listen
from xdplbd.service.statefile import write_state

K = VipKey(ipaddress.ip_address("10.0.0.100"), 80, "tcp")
K6 = VipKey(ipaddress.ip_address("fd00::100"), 443, "tcp")


def snap(t: float, vip_pkts: int, real_pkts: Tuple[int, int], flows: Optional[int] = 3,
         outcome_tx: int = 0) -> Snapshot:
    reals = (
        RealSnap(1, "10.0.0.11", "02:00:00:00:00:11", 1, real_pkts[0], real_pkts[0] * 100,
                 flows),
        RealSnap(2, "10.0.0.12", "02:00:00:00:00:12", 0, real_pkts[1], real_pkts[1] * 100,
                 None if flows is None else 0),
    )
    outcomes = {n: (0, 0) for n in schema.OUTCOMES}
    outcomes["tx"] = (outcome_tx, outcome_tx * 100)
    vips = (VipSnap(K, 1, vip_pkts, vip_pkts * 100, reals),
            VipSnap(K6, 2, 0, 0, ()))
    return Snapshot(t, 1_700_000_000 + t, outcomes, vips, 7 if flows is not None else None,
                    65536, 1.5)


def text_of(renderable: object, width: int = 160) -> str:
    c = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    c.print(renderable)
    return c.export_text()


def row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == label:
            return cells[1:-1]
    raise AssertionError(f"no row {label!r} in\n{text}")


@pytest.mark.parametrize("value,unit,want", [
    (None, "", "-"), (0, "", "0"), (7, "", "7"), (0.5, "", "0.5"), (999, "", "999"),
    (1000, "", "1k"), (1234, "", "1.23k"), (45_600_000, "b", "45.6Mb"), (2.5e12, "B", "2.5TB"),
])
def test_human(value: Optional[float], unit: str, want: str) -> None:
    assert human(value, unit) == want


def test_render_rates_from_two_snapshots() -> None:
    meta = Meta(pin_dir="/p", interface="eth0", mode="native", prog_id=42, generation=5,
                config_digest="abcdef0123456789", daemon_pid=1234, clock="12:00:00")
    out = text_of(render(snap(12.0, 300, (250, 50), outcome_tx=300),
                         snap(10.0, 100, (50, 50), outcome_tx=100), meta))
    assert "eth0: native XDP (program 42)" in out
    assert "generation 5 (config abcdef012345)" in out and "xdplbd pid 1234" in out
    cols = row(out, "VIP / real")
    assert cols == ["VIP / real", "weight", "state", "health", "pkt/s", "bit/s", "flows",
                    "packets", "bytes"]
    v = dict(zip(cols, row(out, "10.0.0.100:80/tcp")))
    assert (v["pkt/s"], v["bit/s"], v["flows"], v["packets"], v["bytes"]) == (
        "100", "80kb", "3", "300", "30kB")  # 200 pkts of 100 B in 2 s
    assert v["state"] == "1/2 up"
    r1 = dict(zip(cols, row(out, "├ 10.0.0.11")))
    assert (r1["weight"], r1["state"], r1["pkt/s"], r1["flows"]) == ("1", "active", "100", "3")
    r2 = dict(zip(cols, row(out, "└ 10.0.0.12")))
    assert (r2["state"], r2["pkt/s"], r2["bit/s"]) == ("draining", "0", "0b")
    assert row(out, "[fd00::100]:443/tcp")[2] == "no reals"
    tx = row(out, "pkt/s")
    assert tx[1] == "100"  # outcome tx: 200 packets in 2 s
    assert "conntrack 7/65,536 entries" in out


def test_render_first_frame_counter_reset_and_no_daemon() -> None:
    meta = Meta(pin_dir="/p", interface="eth0")
    first = text_of(render(snap(1.0, 10, (5, 5)), None, meta))
    cols = row(first, "VIP / real")
    vip = dict(zip(cols, row(first, "10.0.0.100:80/tcp")))
    assert vip["pkt/s"] == "-"  # no rate before a second reading
    assert "not attached to eth0" in first and "xdplbd not running" in first
    assert "generation ?" in first
    # A counter that went back (a real removed, its slot reused) never shows < 0.
    reset = text_of(render(snap(2.0, 10, (1, 5)), snap(1.0, 10, (5, 5)), meta))
    assert dict(zip(cols, row(reset, "├ 10.0.0.11")))["pkt/s"] == "0"
    nof = text_of(render(snap(2.0, 10, (1, 5), flows=None), None, meta))
    assert dict(zip(cols, row(nof, "10.0.0.100:80/tcp")))["flows"] == "-"
    assert "conntrack" not in nof


def test_render_debug_log_panel() -> None:
    meta = Meta(pin_dir="/p", title="xdplb debug (pid 9)", log_lines=("line one", "line two"))
    out = text_of(render(snap(1.0, 0, (0, 0)), None, meta))
    assert out.startswith("xdplb debug (pid 9)")
    assert "daemon log" in out and "line one" in out and "line two" in out


# --- explain -------------------------------------------------------------------------

def backends() -> Dict[int, schema.BackendRec]:
    mk = schema.BackendRec
    return {
        1: mk("02:00:00:00:00:11", 4, 1, 7, 1, ipaddress.ip_address("10.0.0.11")),
        2: mk("02:00:00:00:00:12", 4, 1, 7, 1, ipaddress.ip_address("10.0.0.12")),
        3: mk("02:00:00:00:00:13", 4, 1, 8, 1, ipaddress.ip_address("10.0.0.13")),  # other VIP
    }


SRC = ipaddress.ip_address("10.9.9.9")
RING = tuple(1 + (i % 2) for i in range(97))


def test_explain_branches() -> None:
    b = backends()
    d = explain(SRC, 1000, K, None, None, RING, b)
    assert (d.verdict, d.reason) == ("pass", "not_a_vip")
    d = explain(SRC, 1000, K, 7, None, RING, b)
    assert (d.verdict, d.reason, d.conntrack, d.ring_size) == ("tx", "ring", "absent", 97)
    assert d.ring_slot is not None and d.real == str(b[RING[d.ring_slot]].ip)
    assert d.backend_id == RING[d.ring_slot]
    ring_real = d.real
    other = 1 if d.backend_id == 2 else 2
    d = explain(SRC, 1000, K, 7, Entry(1, other, 0), RING, b)
    assert (d.reason, d.conntrack, d.backend_id) == ("conntrack", "hit", other)
    assert d.ring_slot is None
    d = explain(SRC, 1000, K, 7, Entry(1, other, 0), RING, b, syn=True)
    assert (d.reason, d.conntrack, d.real) == ("ring", "skipped (SYN)", ring_real)
    for stale in (3, 99, 0):  # another VIP's backend, a freed slot, none
        d = explain(SRC, 1000, K, 7, Entry(1, stale, 0), RING, b)
        assert (d.reason, d.conntrack, d.real) == ("ring", "stale", ring_real)
    ku = VipKey(K.addr, 53, "udp")
    now = 5  # ticks of about a second; ages wrap at 2**16, so "5 - 30" is 30 ticks ago
    fresh = explain(SRC, 1000, ku, 7, Entry(1, other, now - 1), RING, b,
                    udp_timeout_ticks=29, now_tick=now)
    assert fresh.reason == "conntrack"
    idle = explain(SRC, 1000, ku, 7, Entry(1, other, (now - 30) & 0xFFFF), RING, b,
                   udp_timeout_ticks=29, now_tick=now)
    assert (idle.reason, idle.conntrack) == ("ring", "expired")
    # A slot with no usable real drops; so does a VIP without a ring.
    d = explain(SRC, 1000, K, 7, None, (0,) * 97, b)
    assert (d.verdict, d.reason) == ("drop", "no_real")
    d = explain(SRC, 1000, K, 7, None, None, b)
    assert (d.verdict, d.reason) == ("drop", "no_real")
    assert set(d.to_json()) >= {"verdict", "reason", "real", "ring_slot", "conntrack"}


def test_infer_ring_size() -> None:
    assert infer_ring_size((1, 2, 1, 2, 1, 0, 0, 0)) == 5
    assert infer_ring_size((0, 0)) == 0


# --- metrics, stats, status ----------------------------------------------------------

def test_metric_families_follow_the_conventions() -> None:
    class One:
        def collect(self):  # type: ignore[no-untyped-def]
            return families(snap(2.0, 300, (250, 50)))

    reg = CollectorRegistry()
    reg.register(One())
    text = generate_latest(reg).decode()
    parsed = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    fams = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert fams["xdplb_vip_packets"] == "counter" and fams["xdplb_real_tracked_flows"] == "gauge"
    assert 'xdplb_vip_packets_total{port="80",proto="tcp",vip="10.0.0.100"} 300.0' in text
    assert ('xdplb_real_bytes_total{port="80",proto="tcp",real="10.0.0.11",vip="10.0.0.100"} '
            "25000.0") in text
    assert 'xdplb_outcome_packets_total{outcome="no_real"} 0.0' in text
    assert parsed["xdplb_conntrack_entries"].value == 7
    assert parsed["xdplb_conntrack_capacity"].value == 65536
    for name in fams:
        assert name.startswith("xdplb_") and name == name.lower()


def test_stats_json_shape() -> None:
    s = stats_json(snap(2.0, 300, (250, 50)))
    assert s["schema"] == 1 and set(s["outcomes"]) == set(schema.OUTCOMES)
    v = s["vips"][0]
    assert (v["vip"], v["port"], v["protocol"], v["vip_id"], v["packets"], v["bytes"]) == (
        "10.0.0.100", 80, "tcp", 1, 300, 30000)
    assert v["reals"][0] == {"ip": "10.0.0.11", "backend_id": 1, "packets": 250,
                             "bytes": 25000}


def test_status_text() -> None:
    data = {
        "schema": 1,
        "daemon": {"running": False, "pid": None, "version": "0.1.0", "started_at": None},
        "dataplane": {"pinned": True, "pin_dir": "/sys/fs/bpf/x", "attached": False,
                      "interface": "eth0", "mode": None, "prog_id": None, "prog_tag": "ab",
                      "source_digest": "cd"},
        "config": {"path": "/etc/x.json", "digest": "0123456789abcdef", "generation": 3,
                   "applied_at": "2025-01-01T00:00:00+00:00"},
        "reloads": 2,
        "last_reload": {"at": "t", "trigger": "SIGHUP", "result": "rejected",
                        "error": "x.json: vips[0].port: bad"},
        "vips": [{"vip": "fd00::1", "port": 80, "protocol": "tcp", "vip_id": 0, "reals": [
            {"ip": "fd00::11", "mac": "02:00:00:00:00:11", "weight": 0, "state": "draining",
             "backend_id": 1}]}],
    }
    out = render_text(data)
    assert "daemon:      not running" in out
    assert "not attached to any interface of this network namespace" in out
    assert "generation 3, digest 0123456789ab" in out
    assert "(SIGHUP): rejected [2 reloads]" in out and "vips[0].port: bad" in out
    assert "[fd00::1]:80/tcp" in out and "draining" in out


def test_status_without_pins_falls_back_to_state_then_config(tmp_path: Path) -> None:
    """state.toml lists reals only for small configs; status (no maps pinned) then
    reads them from the config file, while it is still the one applied."""
    conf = tmp_path / "lb_conf.json"
    conf.write_text(json.dumps({"vips": [{"vip": "10.0.0.100", "port": 80, "protocol": "tcp",
                                          "reals": [{"ip": "10.0.0.11", "mac": "02:00:00:00:00:11",
                                                     "weight": 0}]}]}))
    summary = {"vip": "10.0.0.100", "port": 80, "protocol": "tcp", "vip_id": 4,
               "ring_digest": "00000000000000ff", "active": 0, "draining": 1}
    state = {"config": str(conf), "config_digest": config_digest(conf.read_bytes()),
             "vips": [summary]}
    write_state(str(tmp_path), state)
    no_pins = str(tmp_path / "no-pins")
    # Schema 1 grows by keys: health (issue 13), announcement and ring digest (issue 15).
    unchecked = {"health": "unchecked", "reason": None, "health_since": None,
                 "last_check": None}
    want = [{"vip": "10.0.0.100", "port": 80, "protocol": "tcp", "vip_id": 4,
             "ring_digest": "00000000000000ff", "failing_open": False, "announce": None,
             "reals": [{"ip": "10.0.0.11", "mac": "02:00:00:00:00:11", "weight": 0,
                        "state": "draining", "backend_id": None, **unchecked}]}]
    assert status_data(no_pins, str(tmp_path))["vips"] == want
    listed = {"ip": "10.0.0.11", "mac": "02:00:00:00:00:11", "weight": 0, "state": "draining",
              "backend_id": 9}
    write_state(str(tmp_path), {**state, "vips": [{**summary, "reals": [listed]}]})
    assert status_data(no_pins, str(tmp_path))["vips"][0]["reals"] == [{**listed, **unchecked}]
    conf.write_text(conf.read_text() + " ")  # edited since: no longer what was applied
    write_state(str(tmp_path), state)
    assert status_data(no_pins, str(tmp_path))["vips"][0]["reals"] == []


# --- daemonize helpers ------------------------------------------------------------------

def test_daemon_argv_recognition(tmp_path: object) -> None:
    py = "/usr/bin/python3"
    assert daemonize.is_daemon_argv([py, "-m", "xdplbd.service.daemon", "-c", "x"])
    assert daemonize.is_daemon_argv([py, "-m", "xdplbd.service.daemonize", "--pid-file", "p"])
    assert daemonize.is_daemon_argv([py, "/usr/local/bin/xdplbd", "--pin-dir", "/x"])
    assert daemonize.is_daemon_argv(["/usr/sbin/xdplbd"])
    assert not daemonize.is_daemon_argv([py, "-m", "xdplbd.cli", "status"])
    assert not daemonize.is_daemon_argv([py, "/usr/bin/xdplb", "start"])
    assert not daemonize.is_daemon_argv(["vi", "xdplbd"])
    me = os.getpid()
    assert daemonize.argv_pin_dir(me, ["xdplbd"]) == daemonize.DEFAULT_PIN_DIR
    assert daemonize.argv_pin_dir(me, ["xdplbd", "--pin-dir", "/a/b/"]) == "/a/b"
    assert daemonize.argv_pin_dir(me, ["xdplbd", "--pin-dir=/c"]) == "/c"
    assert daemonize.argv_pin_dir(me, ["xdplbd", "--pin-dir", "rel"]) == os.path.join(
        os.getcwd(), "rel")
    assert not daemonize.running(me) and daemonize.alive(me)


def test_pid_file_helpers(tmp_path: os.PathLike[str]) -> None:
    p = os.path.join(str(tmp_path), "x.pid")
    assert daemonize.read_pid_file(p) is None
    with open(p, "w") as f:
        f.write("123\n")
    assert daemonize.read_pid_file(p) == 123
    daemonize.remove_pid_file(p, 124)
    assert os.path.exists(p)
    daemonize.remove_pid_file(p, 123)
    assert not os.path.exists(p)
    fd = daemonize.hold_pid_file(p)
    try:
        assert daemonize.read_pid_file(p) == os.getpid()
        with pytest.raises(daemonize.StartError, match="held by a running xdplbd"):
            daemonize.hold_pid_file(p)  # flock is per open file: a second open conflicts
    finally:
        os.close(fd)


def test_start_options_and_listen() -> None:
    o = daemonize.StartOptions("c.json", "pins", "state", interface="eth0", xdp_mode="generic",
                               pid_file="x.pid", log_file="x.log").absolute()
    assert o.config == os.path.abspath("c.json") and o.pid_file == os.path.abspath("x.pid")
    args = o.daemon_args()
    assert args[:2] == ["-c", os.path.abspath("c.json")]
    assert args[args.index("-i"):args.index("-i") + 2] == ["-i", "eth0"]
    assert "--syslog" in args and "--xdp-mode" in args and "-v" not in args
    assert parse_listen("127.0.0.1:9110") == ("127.0.0.1", 9110)
    assert parse_listen("[::1]:9110") == ("::1", 9110)
    assert parse_listen("localhost:80") == ("localhost", 80)


# --- the conntrack walk, on a real scratch map -----------------------------------------

@pytest.fixture
def ct_map() -> libbpf.Map:
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a BPF map)")
    fd = libbpf.create_array("xdplb_ct_test", conntrack.BUCKET.size, 256)
    m = libbpf.Map(fd, "xdplb_ct_test")
    yield m
    m.close()


def test_conntrack_walk_counts_live_entries(ct_map: libbpf.Map) -> None:
    now = 1000
    udp_backends = {3, 4}
    want: Dict[int, int] = {}
    buckets = [[0] * conntrack.WAYS for _ in range(256)]
    for i in range(300):
        bid = 1 + i % 4
        idle = bid in udp_backends and i % 2 == 0  # half the UDP flows idle past the timeout
        tick = now - 60 if idle else now - 1
        bucket, way = divmod(i, conntrack.WAYS)
        buckets[bucket][way] = conntrack.encode(conntrack.Entry(2 * i + 1, bid, tick))
        if not idle:
            want[bid] = want.get(bid, 0) + 1
    for i, ways in enumerate(buckets):
        ct_map.update(schema.U32.pack(i), conntrack.BUCKET.pack(*ways))
    scan = count_flows(ct_map, udp_backends, 29, now_tick=now)
    assert scan.entries == 300 and scan.counts == want
    # No UDP backends: every entry counts.
    assert count_flows(ct_map, set(), 29, now_tick=now).counts[3] == 75


def test_conntrack_layout_round_trips_and_ages_wrap() -> None:
    e = conntrack.Entry(0xDEADBEEF, 4095, 0xFFFF)
    assert conntrack.decode(conntrack.encode(e)) == e and conntrack.decode(0) is None
    assert conntrack.age(0xFFFF, 2) == 3  # the 16-bit clock wraps
    assert conntrack.tag_of(0x1234_0000_0000_0000) == 1  # never 0: 0 marks an empty way
    assert conntrack.buckets(1001) == 126 and conntrack.bucket_of(2**64 - 1, 126) == 125
    ways = (0, conntrack.encode(e), 0, 0)
    assert conntrack.find(ways, 0xDEADBEEF) == 1 and conntrack.find(ways, 7) is None
    assert conntrack.free_way(ways, 0xDEADBEEF) == 1 and conntrack.free_way(ways, 7) == 0
