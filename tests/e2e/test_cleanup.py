"""The lab leaves nothing behind: not after failing tests, not after its pytest
session is killed (the next session's safety net removes what a dead one left).

Both run tests/e2e/probe_session.py in a pytest session of its own, which builds a
lab with xdplbd and wrk running, then fails or gets SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

from tests.e2e.harness import BPFFS, cleanup_stale, leftovers, processes_mentioning
from tests.e2e.probe_session import PROBE_ENV
from xdplbd.lab.demo import wait_for
from xdplbd.lab.topology import NETNS_DIR

ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests/e2e/probe_session.py"


def _probe(tmp_path: Path, select: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PROBE,
            "-k", select]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, PROBE_ENV: str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _everything(prefix: str) -> List[str]:
    """Leftovers, plus host-side links of a lab (there should never be any)."""
    out = leftovers(prefix)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out += [f"host link: {line}" for line in links.splitlines() if prefix in line]
    return out


def test_failing_tests_leave_nothing_behind(tmp_path: Path) -> None:
    p = _probe(tmp_path, "fails")
    out, _ = p.communicate(timeout=120)
    prefix = (tmp_path / "prefix").read_text()
    assert prefix == f"e2e{p.pid}-p"
    assert p.returncode == 1 and "2 failed" in out, out
    assert (tmp_path / "failed-under-load").exists()
    assert (tmp_path / "failed-daemon-killed").exists()
    assert _everything(prefix) == []


def test_a_killed_session_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    p = _probe(tmp_path, "blocks")
    try:
        wait_for(lambda: (tmp_path / "ready").exists() or p.poll() is not None, 60,
                 "the probe session to set up its lab")
        assert p.poll() is None, p.communicate()[0]
        prefix = (tmp_path / "prefix").read_text()
        os.kill(p.pid, signal.SIGKILL)  # no finalizer runs
        p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    left = _everything(prefix)
    # It did leave things: namespaces, pins, the daemon and wrk still running.
    assert os.path.exists(os.path.join(BPFFS, prefix))
    assert any(n.startswith(prefix + "-") for n in os.listdir(NETNS_DIR))
    assert processes_mentioning(os.path.join(BPFFS, prefix)), left
    assert prefix in cleanup_stale()
    assert _everything(prefix) == []
