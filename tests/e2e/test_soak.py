"""The chaos soak, short (`make soak` runs it for minutes): random config changes,
SIGHUP, restarts, kill -9 (mid-apply included) and real bounces under wrk load, the
maps checked against the config after every step (xdplbd/lab/soak.py)."""

from __future__ import annotations

import io
import ipaddress
import os
from typing import Iterator

import pytest

from tests.e2e.harness import cleanup_prefix, e2e_prefix, pin_dir_for
from xdplbd.core.model import VipKey
from xdplbd.core.plan import PutBackend
from xdplbd.kernel.snapshot import open_pinned
from xdplbd.lab import chaos
from xdplbd.lab.soak import Soak, summary_text
from xdplbd.lab.topology import Lab, LabSpec
from xdplbd.service.statefile import read_state

SECONDS = 30
SEED = int(os.environ.get("XDPLB_SOAK_SEED", "16"))


@pytest.fixture(scope="module")
def soak(request: pytest.FixtureRequest) -> Iterator[Soak]:
    prefix = e2e_prefix("soak")
    request.addfinalizer(lambda: cleanup_prefix(prefix))
    lab = Lab(LabSpec(prefix=prefix, n_reals=len(chaos.REALS)))
    lab.up()
    s = Soak(lab, pin_dir_for(prefix), SEED, log=io.StringIO())
    s.start()
    yield s
    s.close()


def test_short_soak(soak: Soak) -> None:
    t = soak.run(SECONDS)
    log = soak.log.getvalue()  # type: ignore[attr-defined]
    print("\n" + summary_text(t, SECONDS))
    assert t.inconsistencies == [], log
    assert t.failed_by_cause.get("unexpected", 0) == 0, log
    assert t.steps >= 8 and t.requests > 10 * t.steps, log
    assert t.kills + t.restarts >= 1 and t.reloads >= 3, log


def test_the_checks_catch_a_leaked_backend(soak: Soak) -> None:
    """A backend slot no VIP uses, written behind the daemon's back, is reported."""
    assert soak.check(None) == []
    with open_pinned(soak.lb.pin_dir, read_state(soak.lb.state_dir)) as dp:
        free = max(dp.backend_entries()) + 7
        dp.apply_op(PutBackend(VipKey(ipaddress.ip_address("10.99.0.250"), 80, "tcp"), 63,
                               free, ipaddress.ip_address("10.99.0.250"),
                               "02:00:00:00:00:01", 1))
    problems = soak.check(None)
    assert any(f"leaked backend ids [{free}]" in p or "orphans" in p for p in problems), problems
