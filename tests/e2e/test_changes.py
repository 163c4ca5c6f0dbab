"""Zero failed requests through every change, under steady wrk load.

Each scenario runs two wrk at once against the v4 VIP: keep-alive (24 connections,
every one pinned to a real for the whole run) and new-connection mode
(``Connection: close``, 8 at a time). After 1.5 s of steady load the change is made
and waited for (state.toml, ``xdplb reload``, readiness), then the load goes on for
1.5 s. wrk's Lua script counts every response by status and by real; wrk counts
connect/read/write/timeout errors.

Pass: no failed request in either mode, and every keep-alive connection still open
on the same real afterwards (a reset would show up as a read error and a new
connection). Removing a real is the one change allowed to break connections: only
the keep-alive connections that were on it (counted beforehand from both ends with
ss) and at most the new connections in flight to it at that instant.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Dict

import pytest

from tests.e2e.harness import Env, LoadRun, attached_prog, reals_of, under_load


def _add_real(env: Env) -> None:
    env.lb.apply(env.config({**env.baseline, "real4": 1}))


def _remove_real(env: Env) -> None:
    env.lb.apply(env.config({"real1": 1, "real2": 1}))


def _change_weight(env: Env) -> None:
    env.lb.apply(env.config({"real1": 1, "real2": 3, "real3": 1}))


def _drain_real(env: Env) -> None:
    env.lb.apply(env.config({"real1": 0, "real2": 1, "real3": 1}))


def _sighup(env: Env) -> None:
    gen = env.lb.state()["generation"]
    r = env.lb.reload()  # `xdplb reload`: returns once the daemon has reloaded
    assert r.returncode == 0 and "reloaded" in r.stdout, r.stdout + r.stderr
    assert env.lb.state()["generation"] == gen  # same file: nothing to change


def _restart(env: Env) -> None:
    pid = env.lb.pid
    assert env.lb.stop() == 0  # SIGTERM: exits, leaves the data plane attached
    env.lb.start()
    assert env.lb.pid != pid
    assert "reused pinned" in "\n".join(env.lb.log_lines()[-20:])


def _kill9(env: Env) -> None:
    prog = env.lb.state()["prog_id"]
    assert env.lb.kill() == -9
    # No daemon at all for a while: the data plane forwards on its own.
    assert attached_prog(env) == prog
    time.sleep(0.5)
    env.lb.start()
    assert env.lb.state()["prog_id"] == prog == attached_prog(env)  # adopted, not replaced


def _invalid_config(env: Env) -> None:
    st = env.lb.state()
    broken = json.dumps(env.config())[:-20]  # truncated JSON
    assert env.lb.apply_invalid(broken)["result"] == "rejected"
    bad_mac = env.config({**env.baseline, "real4": 1})
    bad_mac["vips"][0]["reals"][3]["mac"] = "02:00:00:00:00:zz"  # and real4 must not go live
    last = env.lb.apply_invalid(json.dumps(bad_mac))
    assert "vips[0].reals[3].mac" in last["error"], last
    after = env.lb.state()
    assert after["generation"] == st["generation"] and after["vips"] == st["vips"]


SCENARIOS: Dict[str, Callable[[Env], None]] = {
    "add a real": _add_real,
    "remove a real": _remove_real,
    "change a weight": _change_weight,
    "drain a real (weight 0)": _drain_real,
    "SIGHUP reload": _sighup,
    "restart the daemon": _restart,
    "kill -9, then start": _kill9,
    "invalid config": _invalid_config,
}


def _check_unaffected(run: LoadRun, name: str) -> None:
    run.record(name)
    ka, nc = run.keepalive, run.newconn
    assert "?" not in reals_of(run.before).values(), run.before
    assert ka.requests > 1000 and nc.requests > 200, (ka, nc)
    assert run.rate_problems() == []
    assert ka.failed == 0 and run.keepalive_stuck == [], (ka.errors, ka.statuses, run.after)
    assert nc.failed == 0 and run.newconn_stuck == [], (nc.errors, nc.statuses, run.newconn_end)
    # Every keep-alive connection is still open, on the same real, and answering.
    assert reals_of(run.after) == reals_of(run.before), "a keep-alive connection was reset"


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "remove a real"])
def test_zero_failed_requests_under_load(env: Env, name: str) -> None:
    run = under_load(env, lambda: SCENARIOS[name](env))
    _check_unaffected(run, name)


def test_removing_a_real_fails_only_its_own_connections(env: Env) -> None:
    """The keep-alive connections on the removed real fail: reset on their next request
    (or stuck, when the real their flow moves to holds a TIME_WAIT socket for the same
    4-tuple, which the lab's single client makes likely). No other connection may."""
    run = under_load(env, lambda: _remove_real(env))
    ka, nc = run.keepalive, run.newconn
    before = reals_of(run.before)
    assert "?" not in before.values(), run.before
    on_removed = sorted(p for p, real in before.items() if real == "real3")
    survivors = {p: real for p, real in before.items() if real != "real3"}
    ka_stuck, nc_stuck = run.keepalive_stuck, run.newconn_stuck
    run.record("remove a real", allowed_ka=len(on_removed), allowed_nc=nc.connections,
               note_ka=f"{len(on_removed)} keep-alive conns on it: {ka.socket_errors} reset, "
               f"{len(ka_stuck)} stuck",
               note_nc="allowed: the conns in flight to it")
    assert ka.requests > 1000 and nc.requests > 200
    assert run.rate_problems() == []
    # Every connection to a remaining real carries on, same real, answering.
    assert {p: run.after[p].real if p in run.after else None for p in survivors} == survivors
    assert not set(ka_stuck) & set(survivors)
    # The removed real's connections: none is still served by it. Each one is gone
    # (reset), stuck, or its port now carries wrk's new connection to another real.
    for p in on_removed:
        c = run.after.get(p)
        assert c is None or p in ka_stuck or c.real != "real3", (p, c)
    # The failures are those, and only those.
    for r in (ka, nc):
        assert r.non_2xx == 0 and r.errors["connect"] == 0 and r.errors["timeout"] == 0, r
    assert ka.socket_errors + len(ka_stuck) <= len(on_removed), (ka.errors, ka_stuck)
    assert nc.socket_errors + len(nc_stuck) <= nc.connections, (nc.errors, nc_stuck)


def test_load_without_a_change_has_no_failures(env: Env) -> None:
    """Control: the same load and measurement, with no change at all."""
    run = under_load(env, lambda: None)
    _check_unaffected(run, "no change (control)")
