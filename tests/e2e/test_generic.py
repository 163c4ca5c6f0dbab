"""The same load balancer with the program attached in generic (skb) XDP mode:
``xdplbd --xdp-mode generic``. Its own lab and daemon, for this module."""

from __future__ import annotations

from typing import Iterator, List

import pytest

from tests.e2e.harness import (
    BASELINE,
    Env,
    attached_mode,
    dsr_problems,
    dsr_run,
    reals_of,
    running_env,
    spread,
    udp_flows,
    under_load,
)


@pytest.fixture(scope="module")
def generic_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from running_env(request, "g", "generic")


@pytest.fixture
def genv(generic_env: Env) -> Env:
    generic_env.reset()
    return generic_env


def test_attached_in_generic_mode(genv: Env) -> None:
    assert genv.lb.state()["xdp_mode"] == "generic"
    assert attached_mode(genv) == "generic"


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_generic_balances_tcp(genv: Env, family: str) -> None:
    host = genv.lab.vip4 if family == "v4" else genv.lab.vip6
    errors: List[str] = []
    counts, failures = spread(genv.lab, host, 900, errors=errors)
    assert failures == 0, errors
    assert set(counts) == set(BASELINE) and min(counts.values()) > 900 / 3 * 0.7, counts


def test_generic_balances_udp(genv: Env) -> None:
    counts, failures = udp_flows(genv.lab, genv.lab.vip4, genv.lab.spec.udp_port, 600)
    assert failures == 0
    assert set(counts) == set(BASELINE) and min(counts.values()) > 600 / 3 * 0.7, counts


def test_generic_replies_bypass_the_lb(genv: Env) -> None:
    lab = genv.lab
    ev = dsr_run(genv, lab.vip4, 200, udp_port=lab.spec.udp_port)
    assert dsr_problems(genv, ev, lab.client_ip4) == []


def test_generic_add_real_under_load(genv: Env) -> None:
    run = under_load(genv, lambda: genv.lb.apply(genv.config({**BASELINE, "real4": 1})))
    run.record("generic XDP: add a real")
    for r in (run.keepalive, run.newconn):
        assert r.requests > 1000 and r.failed == 0, r
    assert run.keepalive_stuck == [] and run.newconn_stuck == []
    assert run.rate_problems() == []
    assert reals_of(run.after) == reals_of(run.before)
