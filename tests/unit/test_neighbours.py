"""core/neighbours.py: what neighbour table entries mean for the reals (pure)."""

from __future__ import annotations

import ipaddress

from xdplbd.core.config import parse_config
from xdplbd.core.effective import Neighbour
from xdplbd.core.neighbours import (
    BURST_MAX_S,
    BURST_QUIET_S,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_REACHABLE,
    NUD_STALE,
    NeighEntry,
    apply_due,
    change_line,
    mac_conflicts,
    needs_asking,
    observe,
    wanted,
)

IP = ipaddress.ip_address("10.0.0.11")
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def entry(state: int, mac: str | None = A, deleted: bool = False, ip: str = "10.0.0.11"
          ) -> NeighEntry:
    return NeighEntry.of(ip, 2, mac, state, deleted)


def test_a_valid_entry_gives_the_mac() -> None:
    for state in (NUD_REACHABLE, NUD_STALE, NUD_DELAY):
        assert observe(None, entry(state)) == Neighbour(A, True)
    assert NeighEntry.of("10.0.0.11", 2, "02:00:00:00:00:0A", NUD_REACHABLE).mac == A


def test_failed_keeps_the_last_mac_and_says_why() -> None:
    lost = Neighbour(A, False, "no ARP reply")
    assert observe(Neighbour(A, True), entry(NUD_FAILED, None)) == lost
    v6 = entry(NUD_FAILED, None, ip="fd00::11")
    assert observe(None, v6) == Neighbour(None, False, "no NDP reply")


def test_resolving_or_deleted_changes_nothing_but_is_asked_again() -> None:
    known = Neighbour(A, True)
    assert observe(known, entry(NUD_INCOMPLETE, None)) is None
    assert observe(known, entry(NUD_REACHABLE, A, deleted=True)) is None
    assert needs_asking(entry(NUD_REACHABLE, A, deleted=True))
    assert not needs_asking(entry(0, None))  # NONE: our own request's entry, probing
    assert not needs_asking(entry(NUD_INCOMPLETE, None))  # the kernel is at it
    assert not needs_asking(entry(NUD_STALE))


def test_zero_mac_is_never_valid() -> None:
    assert observe(None, entry(NUD_REACHABLE, "00:00:00:00:00:00")) is None


def test_same_answer_is_no_change() -> None:
    assert observe(Neighbour(A, True), entry(NUD_STALE)) is None


def test_log_lines() -> None:
    assert change_line(IP, Neighbour(A, True), Neighbour(B, True), "eth0") == (
        True, f"neighbour 10.0.0.11 on eth0: MAC {A} -> {B}")
    assert change_line(IP, None, Neighbour(A, True), "eth0")[0] is False  # the plan says +real
    assert change_line(IP, Neighbour(A, True), Neighbour(A, False, "no ARP reply"), "eth0") == (
        True, "neighbour 10.0.0.11 on eth0: unresolved (no ARP reply); draining on its last MAC")
    assert change_line(IP, Neighbour(A, False, "x"), Neighbour(A, True), "eth0") == (
        True, f"neighbour 10.0.0.11 on eth0: resolved again to {A}")


def test_wanted_and_conflicts() -> None:
    cfg = parse_config('{"vips": [{"vip": "10.0.0.100", "port": 80, "protocol": "tcp", '
                       '"reals": [{"ip": "10.0.0.11"}, {"ip": "10.0.0.12", "mac": "' + A + '"}]}]}',
                       "x")
    resolve, watch = wanted(cfg)
    assert [str(i) for i in resolve] == ["10.0.0.11"] and [str(i) for i in watch] == ["10.0.0.12"]
    ip12 = ipaddress.ip_address("10.0.0.12")
    assert mac_conflicts(cfg, {ip12: Neighbour(B, True)}) == {ip12: (A, B)}
    assert mac_conflicts(cfg, {ip12: Neighbour(A, True)}) == {}
    assert mac_conflicts(cfg, {ip12: Neighbour(B, False)}) == {}


def test_a_burst_of_changes_makes_one_apply_and_a_single_change_lands_at_once() -> None:
    assert BURST_QUIET_S < BURST_MAX_S < 1.0  # the issue: a MAC change lands within 1 s
    assert apply_due(100.0, 100.0) == 100.0 + BURST_QUIET_S  # one change
    # changes keep coming: the apply waits for a quiet moment...
    assert apply_due(100.0, 100.1) == 100.1 + BURST_QUIET_S
    # ...but never longer than BURST_MAX_S after the first
    assert apply_due(100.0, 100.0 + BURST_MAX_S) == 100.0 + BURST_MAX_S
