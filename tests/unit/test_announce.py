"""core/announce.py: what a node announces, and the BIRD fragment (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from xdplbd.core.announce import LAST_RESORT_MED, decide, render_bird
from xdplbd.core.config import ConfigError, parse_config
from xdplbd.core.effective import effective
from xdplbd.core.model import Config, Real, Vip, VipKey

IP = ipaddress.ip_address
WEB = VipKey(IP("10.0.0.100"), 80, "tcp")
DNS = VipKey(IP("10.0.0.100"), 53, "udp")
V6 = VipKey(IP("fd00::100"), 80, "tcp")
A, B = IP("10.0.0.11"), IP("10.0.0.12")
R = (Real(A, "02:00:00:00:00:0b", 1), Real(B, "02:00:00:00:00:0c", 1))
CFG = Config(vips=(Vip(WEB, R), Vip(DNS, R), Vip(V6, R)))


def test_everything_up_is_announced_once_per_address() -> None:
    d = decide(effective(CFG, {}, {}), attached=True, maintenance=False)
    assert [(r.prefix, r.last_resort) for r in d.routes] == [("10.0.0.100/32", False),
                                                            ("fd00::100/128", False)]
    assert {k: s for k, (s, _) in d.vips.items()} == {WEB: "announced", DNS: "announced",
                                                      V6: "announced"}


def test_a_service_without_an_up_real_makes_its_address_last_resort() -> None:
    health = {WEB: {A: "down", B: "down"}, DNS: {A: "up"}}
    d = decide(effective(CFG, health, {}), attached=True, maintenance=False)
    assert [(r.prefix, r.last_resort) for r in d.routes] == [("10.0.0.100/32", True),
                                                            ("fd00::100/128", False)]
    assert d.vips[WEB] == ("last-resort", "no up real on this node: failing open")
    assert d.vips[DNS][0] == "last-resort" and str(WEB) in d.vips[DNS][1]
    text = render_bird(d.routes)
    assert f"route 10.0.0.100/32 blackhole {{ bgp_med = {LAST_RESORT_MED}; }};" in text
    assert "route fd00::100/128 blackhole;" in text


@pytest.mark.parametrize(("attached", "maintenance", "why"), [
    (False, False, "the data plane is not attached"), (True, True, "maintenance")])
def test_nothing_is_announced_unattached_or_in_maintenance(attached: bool, maintenance: bool,
                                                           why: str) -> None:
    d = decide(effective(CFG, {}, {}), attached=attached, maintenance=maintenance)
    assert d.routes == ()
    assert set(d.vips.values()) == {("withdrawn", why)}


def test_the_fragment_defines_both_protocols_even_when_empty() -> None:
    text = render_bird(())
    assert "protocol static xdplb_vips4 {\n  ipv4;\n}" in text
    assert "protocol static xdplb_vips6 {\n  ipv6;\n}" in text
    assert "route" not in text.replace("routes", "")


def test_the_announce_section_is_validated() -> None:
    base = '{"vips": [], "announce": %s}'
    cfg = parse_config(base % '{"bird": {"file": "/etc/bird/x.conf"}}', "f.json")
    assert cfg.bird is not None and cfg.bird.socket == "/run/bird/bird.ctl"
    for bad, msg in [('{"bird": {"file": "x.conf"}}', "announce.bird.file: \"x.conf\" is not an "
                      "absolute file path"),
                     ('{"bird": {"socket": "/run/b.ctl"}}', "announce.bird.file: is required"),
                     ('{"bird": {"file": "/a", "sock": "/b"}}', "announce.bird.sock"),
                     ('{"bgp": {}}', "announce.bgp")]:
        with pytest.raises(ConfigError) as e:
            parse_config(base % bad, "f.json")
        assert msg in str(e.value), str(e.value)
