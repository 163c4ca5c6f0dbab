"""Traffic through the VIPs, native XDP: balance, DSR, UDP, IPv6, drain and removal.

One lab and one xdplbd for the session (conftest.py); every test starts from the
baseline config (real1-3, weight 1; real4 is in the lab but not in the config).
"""

from __future__ import annotations

import socket
from typing import Dict, List

import pytest

from tests.e2e.harness import (
    Env,
    KeepAlive,
    dsr_problems,
    dsr_run,
    http_once,
    reals_of,
    spread,
    udp_flows,
    under_load,
)
from xdplbd.lab.topology import in_netns

N_SPREAD = 3000
TOLERANCE = 0.15  # each real within +-15% of its weight's share


def _shares_ok(counts: Dict[str, int], weights: Dict[str, int], n: int) -> List[str]:
    total_w = sum(weights.values())
    bad = []
    for real, w in weights.items():
        want = n * w / total_w
        got = counts.get(real, 0)
        if abs(got - want) > TOLERANCE * want:
            bad.append(f"{real}: {got}, want {want:.0f} +-{TOLERANCE:.0%}")
    return bad


@pytest.mark.parametrize(
    "family,weights",
    [
        ("v4", {"real1": 1, "real2": 1, "real3": 1}),
        ("v4", {"real1": 1, "real2": 2, "real3": 3}),
        ("v6", {"real1": 3, "real2": 1, "real3": 2}),
    ],
    ids=["v4-equal", "v4-weighted", "v6-weighted"],
)
def test_new_connections_spread_by_weight(env: Env, family: str, weights: Dict[str, int]
                                         ) -> None:
    env.lb.apply(env.config(weights))
    host = env.lab.vip4 if family == "v4" else env.lab.vip6
    errors: List[str] = []
    counts, failures = spread(env.lab, host, N_SPREAD, errors=errors)
    assert failures == 0, errors
    assert sum(counts.values()) == N_SPREAD
    assert set(counts) == set(weights), counts
    assert _shares_ok(counts, weights, N_SPREAD) == [], dict(counts)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_replies_bypass_the_lb(env: Env, family: str) -> None:
    """DSR: only client->VIP frames cross the LB's link, rewritten to a real's MAC on
    the way out; the replies reach the client from the reals' MACs."""
    lab = env.lab
    host, client = (lab.vip4, lab.client_ip4) if family == "v4" else (lab.vip6, lab.client_ip6)
    ev = dsr_run(env, host, 200, udp_port=lab.spec.udp_port if family == "v4" else None)
    assert dsr_problems(env, ev, client) == []
    assert set(ev.answers) == {"real1", "real2", "real3"}
    # The counters agree: the LB sends what the client sends, the client gets more back.
    assert ev.lb_tx_packets <= ev.client_tx_packets + 10
    assert ev.client_rx_bytes > ev.lb_tx_bytes


def test_udp_balances_and_a_flow_stays_on_its_real(env: Env) -> None:
    lab = env.lab
    port = lab.spec.udp_port
    counts, failures = udp_flows(lab, lab.vip4, port, 1500)
    assert failures == 0
    assert _shares_ok(counts, env.baseline, 1500) == [], dict(counts)

    # One flow (one socket, one source port): always the same real, also across a change.
    with in_netns(lab.ns_client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(2)
        s.connect((lab.vip4, port))

        def ask() -> str:
            s.send(b"?")
            return s.recv(2048).decode().strip()

        first = {ask() for _ in range(50)}
        assert len(first) == 1, first
        env.lb.apply(env.config({**env.baseline, "real4": 1}))
        assert {ask() for _ in range(50)} == first


def test_ipv6_end_to_end(env: Env) -> None:
    lab = env.lab
    assert lab.curl(f"http://[{lab.vip6}]/").strip() in lab.real_names
    vips = {(v["vip"], v["port"], v["protocol"]) for v in env.lb.state()["vips"]}
    assert (lab.vip6, 80, "tcp") in vips
    run = under_load(env, lambda: env.lb.apply(env.config({**env.baseline, "real4": 1})),
                     host=lab.vip6, before_s=1.0, after_s=1.0)
    run.record("IPv6 VIP: add a real")
    for r in (run.keepalive, run.newconn):
        assert r.requests > 1000 and r.failed == 0, r
    assert run.keepalive_stuck == [] and run.newconn_stuck == []
    assert run.rate_problems() == []
    assert reals_of(run.after) == reals_of(run.before)  # none moved or reset
    errors: List[str] = []
    counts, failures = spread(lab, lab.vip6, 400, errors=errors)
    assert failures == 0, errors
    assert counts["real4"] > 0


def test_drained_real_keeps_its_connections_and_gets_no_new_ones(env: Env) -> None:
    lab = env.lab
    conns = [KeepAlive(lab, lab.vip4) for _ in range(30)]
    try:
        owner = [c.get() for c in conns]
        assert "real1" in owner, owner
        env.lb.apply(env.config({"real1": 0, "real2": 1, "real3": 1}))
        st = {r["ip"]: r["state"] for r in env.lb.state()["vips"][0]["reals"]}
        assert st[lab.real_ip4("real1")] == "draining"
        for _ in range(5):
            assert [c.get() for c in conns] == owner  # every request succeeds, same real
        errors: List[str] = []
        counts, failures = spread(lab, lab.vip4, 600, errors=errors)
        assert failures == 0, errors
        assert counts["real1"] == 0 and counts["real2"] > 0 and counts["real3"] > 0
        assert [c.get() for c in conns] == owner
    finally:
        for c in conns:
            c.close()


def test_only_a_removed_reals_connections_fail(env: Env) -> None:
    """Keep-alive connections: those on the removed real fail on their next request
    (reset, or a timeout if their flow lands on a real holding a TIME_WAIT socket for
    the same 4-tuple), every other one carries on with its real; new connections
    avoid it."""
    lab = env.lab
    conns = [KeepAlive(lab, lab.vip4) for _ in range(30)]
    try:
        owner = [c.get() for c in conns]
        assert "real3" in owner, owner
        env.lb.apply(env.config({"real1": 1, "real2": 1}))
        for c, real in zip(conns, owner):
            if real == "real3":
                with pytest.raises((ConnectionError, OSError)):
                    c.get()
            else:
                assert c.get() == real
        errors: List[str] = []
        counts, failures = spread(lab, lab.vip4, 600, errors=errors)
        assert failures == 0, errors
        assert set(counts) == {"real1", "real2"}
    finally:
        for c in conns:
            c.close()
    assert http_once(lab, lab.vip4) in ("real1", "real2")
