"""End-to-end fixtures: a namespace lab with xdplbd in native XDP mode, shared by the
session; the per-test reset to the baseline config; the session's safety net.

Safety net: at the start, the leftovers of e2e sessions that died (SIGKILL, reboot
of the runner...) are removed; at the end, everything this session created, whatever
its fixtures managed to do.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.e2e.harness import RESULTS, Env, cleanup_session, cleanup_stale, running_env


@pytest.fixture(scope="session", autouse=True)
def e2e_safety_net() -> Iterator[None]:
    assert os.geteuid() == 0, "the e2e tests need root (network namespaces, XDP, bpffs)"
    cleanup_stale()
    try:
        yield
    finally:
        cleanup_session(os.getpid())


@pytest.fixture(scope="session")
def native_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The lab (4 reals, real1-3 in the config) with xdplbd in native mode."""
    yield from running_env(request, "n", "native")


@pytest.fixture
def env(native_env: Env) -> Env:
    """The native lab, with the daemon running the baseline config."""
    native_env.reset()
    return native_env


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("xdplb e2e: requests under load")
    tr.write_line(f"{'scenario':<28} {'wrk mode':<10} {'conns':>5} {'requests':>9} "
                  f"{'req/s':>8} {'failed':>6} {'allowed':>7}  errors")
    for r in RESULTS:
        errs = ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v)
        if r["non_2xx"]:
            errs += f", non-2xx {r['non_2xx']}"
        if r["stuck"]:
            errs += f", stuck {r['stuck']}"
        errs = errs.lstrip(", ")
        tr.write_line(
            f"{r['scenario']:<28} {r['mode']:<10} {r['connections']:>5} {r['requests']:>9} "
            f"{r['rate']:>8.0f} {r['failed']:>6} {r['allowed']:>7}  {errs or '-'}"
            + (f"  ({r['note']})" if r["note"] else "")
        )
