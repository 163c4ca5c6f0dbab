"""core/effective.py: config x health x neighbour MACs -> what the maps must hold."""

from __future__ import annotations

import ipaddress

from xdplbd.core.effective import Neighbour, effective
from xdplbd.core.model import Config, Real, Vip, VipKey

IP = ipaddress.ip_address
KEY = VipKey(IP("10.0.0.100"), 80, "tcp")
A, B, C = IP("10.0.0.11"), IP("10.0.0.12"), IP("10.0.0.13")
MAC = {A: "02:00:00:00:00:0b", B: "02:00:00:00:00:0c", C: "02:00:00:00:00:0d"}


def cfg(*reals: Real) -> Config:
    return Config(vips=(Vip(KEY, reals),))


def weights(e: object) -> dict:
    return {r.ip: (r.mac, r.weight) for r in e.config.vips[0].reals}  # type: ignore[attr-defined]


def test_no_health_and_configured_macs_is_the_config_itself() -> None:
    c = cfg(Real(A, MAC[A], 1), Real(B, MAC[B], 0))
    e = effective(c, {}, {})
    assert e.config == c
    assert [e.reals[(KEY, ip)].state for ip in (A, B)] == ["active", "draining"]
    assert e.reals[(KEY, A)].health == "unchecked" and not e.failing_open


def test_a_down_real_drains_and_keeps_its_backend() -> None:
    e = effective(cfg(Real(A, MAC[A], 2), Real(B, MAC[B], 1)),
                  {(KEY, A): "down", (KEY, B): "up"}, {})
    assert weights(e) == {A: (MAC[A], 0), B: (MAC[B], 1)}
    assert e.reals[(KEY, A)].state == "down" and "health" in e.reals[(KEY, A)].reason
    assert not e.failing_open


def test_all_down_fails_open_with_the_configured_weights() -> None:
    c = cfg(Real(A, MAC[A], 2), Real(B, MAC[B], 1), Real(C, MAC[C], 0))
    e = effective(c, {(KEY, A): "down", (KEY, B): "down", (KEY, C): "up"}, {})
    assert e.failing_open == {KEY}  # the only up real has weight 0: it takes no flows
    assert weights(e) == {A: (MAC[A], 2), B: (MAC[B], 1), C: (MAC[C], 0)}


def test_macs_from_the_neighbour_table() -> None:
    c = cfg(Real(A, "", 1), Real(B, "", 1), Real(C, "", 1))
    neigh = {A: Neighbour("02:aa:00:00:00:01", True),
             B: Neighbour("02:aa:00:00:00:02", False, "no ARP reply")}
    e = effective(c, {}, neigh)
    # Resolved: forwarded. Lost: keeps its last MAC but drains. Never known: no backend.
    assert weights(e) == {A: ("02:aa:00:00:00:01", 1), B: ("02:aa:00:00:00:02", 0)}
    assert e.reals[(KEY, B)].reason == "unresolved: no ARP reply"
    assert e.reals[(KEY, C)].state == "down" and e.reals[(KEY, C)].mac is None
    assert e.reals[(KEY, C)].mac_source == "unresolved"


def test_a_configured_mac_wins_over_the_neighbour_table() -> None:
    e = effective(cfg(Real(A, MAC[A], 1)), {}, {A: Neighbour("02:ff:ff:ff:ff:ff", True)})
    assert weights(e) == {A: (MAC[A], 1)}
    assert e.reals[(KEY, A)].mac_source == "config"


def test_unchanged_vips_stay_the_same_objects() -> None:
    """The plan memoises ring digests on Vip objects: an apply that changes nothing
    for a VIP must hand the plan the very same object (1000-VIP reloads stay fast)."""
    c = cfg(Real(A, MAC[A], 1), Real(B, MAC[B], 1))
    assert effective(c, {}, {}).config is c
    down = {(KEY, A): "down", (KEY, B): "up"}
    first, second = effective(c, down, {}), effective(c, down, {})
    assert first.config.vips[0] is second.config.vips[0]
    mac_less = cfg(Real(A, "", 1))
    neigh = {A: Neighbour("02:aa:00:00:00:01", True)}
    assert effective(mac_less, {}, neigh).config.vips[0] is \
        effective(mac_less, {}, neigh).config.vips[0]
