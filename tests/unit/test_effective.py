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
                  {KEY: {A: "down", B: "up"}}, {})
    assert weights(e) == {A: (MAC[A], 0), B: (MAC[B], 1)}
    assert e.reals[(KEY, A)].state == "down" and "health" in e.reals[(KEY, A)].reason
    assert not e.failing_open


def test_all_down_fails_open_with_the_configured_weights() -> None:
    c = cfg(Real(A, MAC[A], 2), Real(B, MAC[B], 1), Real(C, MAC[C], 0))
    e = effective(c, {KEY: {A: "down", B: "down", C: "up"}}, {})
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
    down = {KEY: {A: "down", B: "up"}}
    first = effective(c, down, {})
    assert effective(c, down, {}, first).config.vips[0] is first.config.vips[0]
    # Equal verdicts in a new mapping: worked out again, to the same effective Vip.
    again = effective(c, {KEY: {A: "down", B: "up"}}, {}, first)
    assert again.vips[KEY] is not first.vips[KEY]
    assert again.config.vips[0] is first.config.vips[0]
    mac_less = cfg(Real(A, "", 1))
    neigh = {A: Neighbour("02:aa:00:00:00:01", True)}
    one = effective(mac_less, {}, neigh)
    assert effective(mac_less, {}, neigh, one).config.vips[0] is one.config.vips[0]
    assert effective(mac_less, {}, dict(neigh), one).config.vips[0] is one.config.vips[0]


def test_a_vip_whose_inputs_are_the_same_objects_keeps_its_part() -> None:
    """A reload that edits one VIP of many works out that one only: the others keep
    their part (the same object), which the checker's copy and status skip."""
    other = VipKey(IP("10.0.0.101"), 80, "tcp")
    a = Vip(KEY, (Real(A, MAC[A], 1), Real(B, MAC[B], 1)))
    b = Vip(other, (Real(C, "", 1),))
    health = {KEY: {A: "down", B: "up"}}
    neigh = {C: Neighbour(MAC[C], True)}
    first = effective(Config(vips=(a, b)), health, neigh)
    edited = Vip(KEY, (Real(A, MAC[A], 1), Real(B, MAC[B], 2)))
    second = effective(Config(vips=(edited, b)), health, neigh, first)
    assert second.vips[other] is first.vips[other]
    assert second.vips[KEY] is not first.vips[KEY]
    assert weights(second) == {A: (MAC[A], 0), B: (MAC[B], 2)}
    # A new neighbour view: the VIP with a MAC-less real is worked out again.
    lost = {C: Neighbour(MAC[C], False, "no ARP reply")}
    third = effective(Config(vips=(edited, b)), health, lost, second)
    assert third.vips[KEY] is second.vips[KEY]
    assert third.reals[(other, C)].state == "down"
    # New verdicts for a VIP: its part is new; the flat view follows.
    fourth = effective(Config(vips=(edited, b)), {KEY: {A: "up", B: "up"}}, lost, third)
    assert fourth.reals[(KEY, A)].state == "active" and fourth.vips[other] is third.vips[other]
