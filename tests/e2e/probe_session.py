"""Not collected on its own (no test_ prefix): test_cleanup.py runs it in a separate
pytest session to check that failing tests, and a killed session, leave nothing
behind. It builds a small lab with xdplbd, exactly as the real fixtures do."""

from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from tests.e2e.harness import (
    Env,
    cleanup_prefix,
    e2e_prefix,
    http_once,
    start_env,
    stop_env,
)
from xdplbd.lab.demo import Wrk

PROBE_ENV = "XDPLB_E2E_PROBE"  # a directory for the probe's notes to its caller

pytestmark = pytest.mark.skipif(PROBE_ENV not in os.environ, reason="run by test_cleanup.py")


def _note(name: str, text: str) -> None:
    path = os.path.join(os.environ[PROBE_ENV], name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@pytest.fixture(scope="module")
def probe_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    prefix = e2e_prefix("p")
    _note("prefix", prefix)
    request.addfinalizer(lambda: cleanup_prefix(prefix))
    env = start_env(prefix, 2, {"real1": 1, "real2": 1})
    yield env
    stop_env(env)


def test_fails_under_load(probe_env: Env) -> None:
    Wrk(probe_env.lab, f"http://{probe_env.lab.vip4}/", connections=4, duration=60).start()
    assert http_once(probe_env.lab, probe_env.lab.vip4) in ("real1", "real2")
    _note("failed-under-load", "1")
    raise AssertionError("deliberate failure, with wrk running")


def test_fails_with_the_daemon_killed(probe_env: Env) -> None:
    probe_env.lb.kill()
    _note("failed-daemon-killed", "1")
    raise AssertionError("deliberate failure, with the daemon killed")


def test_blocks_until_killed(probe_env: Env) -> None:
    Wrk(probe_env.lab, f"http://{probe_env.lab.vip4}/", connections=4, duration=60).start()
    _note("ready", str(os.getpid()))
    time.sleep(120)  # the caller SIGKILLs this session meanwhile
