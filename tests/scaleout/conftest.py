"""The scale-out tests: one lab per module (tests/scaleout/test_*.py), all real: BIRD on
a router and on every node, xdplbd, keepalived, nginx, wrk and the long-lived client.

Labs are named ``so<pid><tag>``; a session's leftovers (a crash, a kill -9) are
removed by the next session once that pid is gone. The figures each test measured
are printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Dict, Iterator, List

import pytest

from xdplbd.lab.scaleout import ScaleLab, ScaleSpec
from xdplbd.lab.topology import NETNS_DIR, STATE_ROOT
from xdplbd.service.daemonize import alive

_NAME = re.compile(r"^so(\d+)([a-z])(?:-.*)?$")
FIGURES: List[Dict[str, Any]] = []


def prefix(tag: str) -> str:
    return f"so{os.getpid()}{tag}"


def record(test: str, **figures: Any) -> None:
    """Keep a test's measured figures for the summary (and print them with -s)."""
    FIGURES.append({"test": test, **figures})
    print(f"\n{test}: {figures}")


def _stale() -> List[str]:
    found = set()
    for root in (NETNS_DIR, STATE_ROOT, "/sys/fs/bpf"):
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        for n in names:
            m = _NAME.match(n)
            if m and not alive(int(m.group(1))):
                found.add(f"so{m.group(1)}{m.group(2)}")
    return sorted(found)


@pytest.fixture(scope="session", autouse=True)
def _clean_stale() -> None:
    assert os.geteuid() == 0, "the scale-out tests need root (network namespaces, XDP)"
    for tool in ("bird", "birdc", "keepalived", "nginx", "wrk", "tc", "ethtool", "bridge"):
        assert shutil.which(tool), f"{tool} is missing: run `make setup` (scripts/bootstrap.sh)"
    for p in _stale():
        ScaleLab(ScaleSpec(prefix=p, n_lbs=8, n_reals=3, vrrp=True)).down()


def lab_fixture(request: pytest.FixtureRequest, spec: ScaleSpec) -> Iterator[ScaleLab]:
    lab = ScaleLab(spec)
    request.addfinalizer(lab.down)  # before up(): runs even if up() fails
    lab.up()
    yield lab


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("scale-out figures")
    for f in FIGURES:
        rest = ", ".join(f"{k}={v}" for k, v in f.items() if k != "test")
        tr.write_line(f"{f['test']}: {rest}")
