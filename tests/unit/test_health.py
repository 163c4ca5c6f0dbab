"""core/health.py, core/frames.py and the healthcheck config: pure, no root."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Dict, List

import pytest

from xdplbd.core import frames
from xdplbd.core.config import ConfigError, parse_config
from xdplbd.core.effective import effective
from xdplbd.core.health import (
    HTTP,
    TCP,
    TCP_DSR,
    UDP,
    Check,
    Result,
    check_of,
    checks_of,
    new_state,
    observe,
    payload,
    state_from_dict,
    state_to_dict,
    transition_text,
    vip_verdicts,
)

IP = ipaddress.ip_address
MAC1, MAC2 = "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def doc(check: Any = None, real_check: Any = None, proto: str = "tcp") -> Dict[str, Any]:
    r1: Dict[str, Any] = {"ip": "10.0.0.11", "mac": MAC1}
    if real_check is not None:
        r1["healthcheck"] = real_check
    v: Dict[str, Any] = {"vip": "10.0.0.100", "port": 80, "protocol": proto,
                         "reals": [r1, {"ip": "10.0.0.12", "mac": MAC2}]}
    if check is not None:
        v["healthcheck"] = check
    return {"vips": [v]}


def errors(d: Dict[str, Any]) -> List[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps(d), "lb_conf.json")
    return [f"{x.path}: {x.reason}" for x in e.value.errors]


# -- config -------------------------------------------------------------------------


def test_defaults_and_per_real_override() -> None:
    cfg = parse_config(json.dumps(doc({"type": "tcp"}, {"port": 8080, "fall": 5})), "f")
    vip = cfg.vips[0]
    a, b = (check_of(vip.key, r) for r in vip.reals)
    assert a is not None and b is not None
    assert (a.probe.kind, a.probe.port, a.fall, a.rise) == (TCP_DSR, 8080, 5, 2)
    assert (b.probe.kind, b.probe.port, b.fall, b.interval, b.probe.timeout) == \
        (TCP_DSR, 80, 3, 2.0, 1.0)
    assert b.probe.addr == IP("10.0.0.100") and b.probe.mac == MAC2


def test_no_healthcheck_and_type_none_check_nothing() -> None:
    assert checks_of(parse_config(json.dumps(doc()), "f").vips[0]) == ()
    assert checks_of(parse_config(json.dumps(doc({"type": "none"})), "f").vips[0]) == ()


@pytest.mark.parametrize("check,want", [
    ({"type": "icmp"}, 'vips[0].healthcheck.type: "icmp" is not a check type'),
    ({"port": 80}, "vips[0].healthcheck.type: is required"),
    ({"type": "tcp", "timeout": 2, "interval": 2}, "vips[0].healthcheck.timeout: timeout 2 s "
     "must be shorter than interval 2 s"),
    ({"type": "tcp", "interval": 0.01}, "vips[0].healthcheck.interval: 0.01 is out of range"),
    ({"type": "tcp", "rise": 0}, "vips[0].healthcheck.rise: 0 is out of range 1..100"),
    ({"type": "tcp", "fall": True}, "vips[0].healthcheck.fall: must be an integer"),
    ({"type": "tcp", "port": 70000}, "vips[0].healthcheck.port: 70000 is out of range"),
    ({"type": "tcp", "dsr": "yes"}, "vips[0].healthcheck.dsr: must be true or false"),
    ({"type": "tcp", "path": "/x"}, "vips[0].healthcheck.path: applies to type http only"),
    ({"type": "http", "send": "x"}, "vips[0].healthcheck.send: applies to type udp only"),
    ({"type": "http", "path": "x y"}, "vips[0].healthcheck.path: \"x y\" must start with /"),
    ({"type": "http", "expect": [400, 200]}, "vips[0].healthcheck.expect: [400, 200]: the "
     "lowest code is above the highest"),
    ({"type": "http", "expect": 700}, "vips[0].healthcheck.expect: 700 is out of range"),
    ({"type": "http", "host": "a b"}, "vips[0].healthcheck.host: \"a b\" is not a hostname"),
    ({"type": "udp", "send": "hex:0g"}, "vips[0].healthcheck.send: \"hex:0g\": after"),
    ({"type": "tcp", "intervall": 1}, 'vips[0].healthcheck.intervall: unknown key "intervall"'),
    ("tcp", "vips[0].healthcheck: must be an object"),
])
def test_bad_healthcheck_names_the_field(check: Any, want: str) -> None:
    errs = errors(doc(check))
    assert any(e.startswith(want) for e in errs), errs


def test_bad_per_real_override_names_the_real() -> None:
    errs = errors(doc({"type": "tcp", "interval": 1, "timeout": 0.5}, {"timeout": 1.5}))
    assert errs == ["vips[0].reals[0].healthcheck.timeout: timeout 1.5 s must be shorter than "
                    "interval 1 s"]


def test_probe_kinds() -> None:
    def kind(c: Dict[str, Any]) -> Any:
        vip = parse_config(json.dumps(doc(c)), "f").vips[0]
        chk = check_of(vip.key, vip.reals[0])
        assert chk is not None
        return chk.probe

    assert kind({"type": "tcp", "dsr": False}).kind == TCP
    assert kind({"type": "tcp", "dsr": False}).addr == IP("10.0.0.11")
    p = kind({"type": "http", "path": "/healthz", "expect": 204})
    assert (p.kind, p.addr, p.host, p.expect) == (HTTP, IP("10.0.0.11"), "10.0.0.11", (204, 204))
    p = kind({"type": "udp", "send": "hex:00ff", "receive": "pong"})
    assert p.kind == UDP and payload(p.send) == b"\x00\xff" and payload(p.receive) == b"pong"


def test_an_endpoint_shared_by_vips_is_one_check() -> None:
    d = doc({"type": "http", "path": "/h"})
    d["vips"].append({**d["vips"][0], "port": 443})  # same reals, same check target
    d["vips"][1]["healthcheck"] = {"type": "http", "path": "/h", "port": 80}
    cfg = parse_config(json.dumps(d), "f")
    keys = {c.key for v in cfg.vips for _ip, c in checks_of(v)}
    assert len(keys) == 2  # two reals, not four


# -- hysteresis ----------------------------------------------------------------------


def run(st: Any, results: str, rise: int = 2, fall: int = 3) -> List[bool]:
    out = []
    for i, ch in enumerate(results):
        st, _ = observe(st, Result(ch == "+", "", float(i)), rise, fall)
        out.append(st.up)
    return out


def test_rise_and_fall() -> None:
    down = new_state(0.0)
    assert not down.up and down.last is not None and down.last.detail == "not checked yet"
    assert run(down, "+-+") == [False, False, False]  # never two in a row
    assert run(down, "++") == [False, True]
    up = observe(down, Result(True, "", 1.0), 1, 3)[0]
    assert up.up and up.since == 1.0
    assert run(up, "--+---") == [True, True, True, True, True, False]


def test_transition_line_and_persistence() -> None:
    cfg = parse_config(json.dumps(doc({"type": "tcp", "interval": 2, "timeout": 1})), "f")
    vip = cfg.vips[0]
    ip, c = checks_of(vip)[1]
    st = observe(observe(observe(observe(observe(new_state(0.0), Result(True, "", 1), 2, 3)[0],
                 Result(True, "", 2), 2, 3)[0], Result(False, "x", 3), 2, 3)[0],
                 Result(False, "x", 4), 2, 3)[0], Result(
                     False, "tcp: no SYN-ACK from 10.0.0.100:80", 5), 2, 3)
    assert st[1] and not st[0].up
    assert transition_text(vip.key, ip, st[0], c) == (
        "vip 10.0.0.100:80/tcp: real 10.0.0.12 down: tcp: no SYN-ACK from 10.0.0.100:80 "
        "(3/3 failed)")
    assert state_from_dict(json.loads(json.dumps(state_to_dict(st[0])))) == st[0]
    assert state_from_dict({"up": "yes", "since": 1}) is None
    assert state_from_dict({}) is None


def test_verdicts_and_a_new_real_starts_down_unless_its_vip_has_no_up_real() -> None:
    cfg = parse_config(json.dumps(doc({"type": "tcp"})), "f")
    vip = cfg.vips[0]
    checks = checks_of(vip)
    (ip_a, ca), (ip_b, _cb) = checks
    up = observe(new_state(0.0), Result(True, "", 1), 1, 1)[0]
    # Only real a has a verdict; b was just added by a reload: down, a takes the flows.
    v = vip_verdicts(checks, {ca.key: up})
    assert v == {ip_a: "up", ip_b: "down"}
    eff = effective(cfg, {vip.key: v}, {})
    assert {r.ip: r.weight for r in eff.config.vips[0].reals} == {ip_a: 1, ip_b: 0}
    # Both new (nothing up): the VIP fails open and both take flows.
    eff = effective(cfg, {vip.key: vip_verdicts(checks, {})}, {})
    assert eff.failing_open == {vip.key}
    assert {r.weight for r in eff.config.vips[0].reals} == {1}
    assert eff.config.vips[0].healthcheck == vip.healthcheck
    # A daemon's very first start (no saved state): unknown checks count as up.
    assert set(vip_verdicts(checks, {}, "up").values()) == {"up"}


# -- frames -------------------------------------------------------------------------


def test_syn_frame_round_trips_and_checksums_verify() -> None:
    src, dst = IP("10.0.0.3"), IP("10.0.0.100")
    f = frames.tcp_frame(frames.mac_bytes(MAC1), frames.mac_bytes(MAC2), src, dst, 61000, 80,
                         12345)
    assert frames.checksum(f[14:34]) == 0  # IPv4 header
    tcp = f[34:]
    pseudo = src.packed + dst.packed + bytes((0, 6)) + len(tcp).to_bytes(2, "big")
    assert frames.checksum(pseudo + tcp) == 0
    t = frames.parse_tcp(f)
    assert t is not None and (t.sport, t.dport, t.seq, t.flags) == (61000, 80, 12345,
                                                                    frames.TH_SYN)
    assert t.src_mac == frames.mac_bytes(MAC2)
    f6 = frames.tcp_frame(b"\x02" * 6, b"\x04" * 6, IP("fd00::3"), IP("fd00::100"), 61001, 80, 7,
                          flags=frames.TH_RST)
    t6 = frames.parse_tcp(f6)
    assert t6 is not None and t6.dport == 80 and t6.flags == frames.TH_RST


def test_arp_and_ns_claims() -> None:
    vip4, vip6 = IP("10.0.0.100"), IP("fd00::100")
    assert isinstance(vip4, ipaddress.IPv4Address) and isinstance(vip6, ipaddress.IPv6Address)
    req = frames.arp_request(b"\x02" * 6, b"\x04" * 6, ipaddress.IPv4Address("10.0.0.3"), vip4)
    assert frames.claims(req, vip4) is None  # a request claims nothing
    reply = bytearray(req)
    reply[6:12] = b"\x06" * 6
    reply[21] = 2
    reply[28:32] = vip4.packed
    assert frames.claims(bytes(reply), vip4) == b"\x06" * 6
    ns = frames.neighbour_solicitation(b"\x02" * 6, b"\x04" * 6,
                                       ipaddress.IPv6Address("fd00::3"), vip6)
    assert frames.claims(ns, vip6) is None
    assert str(frames.solicited_node(vip6)) == "ff02::1:ff00:100"


def test_reply_filter_is_whole_instructions() -> None:
    prog = frames.reply_filter(61000, 65535)
    assert len(prog) % 8 == 0 and 20 < len(prog) // 8 < 40


# -- the checker process's wire format, and carrying verdicts over a reload ------------


def test_checks_and_keys_round_trip_the_wire() -> None:
    from xdplbd.core.healthwire import vip_checks_from_wire, vip_checks_to_wire

    http = {"type": "http", "path": "/h", "expect": [200, 299], "interval": 3, "timeout": 1}
    udp = {"type": "udp", "send": "hex:0a0b", "receive": "pong"}
    for check in ({"type": "tcp"}, {"type": "tcp", "dsr": False}, http, udp):
        vip = parse_config(json.dumps(doc(check)), "f").vips[0]
        checks = checks_of(vip)
        wire = json.loads(json.dumps(vip_checks_to_wire(vip.key, checks)))
        key, back = vip_checks_from_wire(wire)
        assert key == vip.key and back == checks
        assert [c.key for _, c in back] == [c.key for _, c in checks]


def test_carry_keeps_verdicts_and_starts_new_checks_down() -> None:
    from xdplbd.core.health import carry

    vip = parse_config(json.dumps(doc({"type": "tcp"})), "f").vips[0]
    (_, a), (_, b) = checks_of(vip)
    up = observe(observe(new_state(0.0), Result(True, "ok", 1.0), 2, 3)[0],
                 Result(True, "ok", 2.0), 2, 3)[0]
    assert up.up
    states = {a.key: up}
    # Kept check: kept state; new check: down (or up on a first start); gone: dropped.
    got = carry([b], [a], states, optimistic=False)
    assert got == {a.key: up}
    got = carry([a], [b], states, optimistic=False)
    assert list(got) == [b.key] and not got[b.key].up
    assert carry([a], [b], states, optimistic=True)[b.key].up
    # Only the timing changed (same probe): the verdict carries over.
    slower = Check(a.probe, a.interval * 2, a.rise, a.fall)
    assert carry([a], [slower], states, optimistic=False)[slower.key] is up
