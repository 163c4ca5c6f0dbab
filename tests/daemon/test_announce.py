"""The daemon's route announcement against a real BIRD 2 (host namespace, no BGP,
no kernel protocol: it touches no routing table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.announce.test_bird import Bird
from tests.daemon.conftest import LB_IF, TUNABLES, Daemon, real, vip4
from xdplbd.core.announce import PROTOCOL_V4, render_bird
from xdplbd.service import bird


@pytest.fixture
def birdd(workdir: str) -> Iterator[Bird]:
    b = Bird(Path(workdir))
    b.fragment.write_text(render_bird(()))  # BIRD refuses to start without the include
    b.start()
    yield b
    b.stop()


def _config(b: Bird) -> str:
    return json.dumps({"interface": LB_IF, "xdp_mode": "native", "tunables": TUNABLES,
                       "vips": [vip4(reals=[real(1)])],
                       "announce": {"bird": {"file": str(b.fragment), "socket": b.sock}}})


def _xdplb(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdplbd.cli", *args, "--pin-dir", d.pin_dir,
                           "--state-dir", d.state_dir], capture_output=True, text=True,
                          timeout=60)


def test_maintenance_applies_while_the_config_file_is_rejected(daemon: Daemon,
                                                                birdd: Bird) -> None:
    """`xdplb maintenance` signals a reload; a broken config on disk rejects that reload,
    yet the maintenance flag (not in the file) must still reach BIRD."""
    daemon.write_config(_config(birdd))
    daemon.start()
    assert bird.route_count(birdd.sock, PROTOCOL_V4) == 1
    before = int(daemon.state()["reloads"])
    daemon.write_config('{"vips": "not a list"}')  # the watch reloads it: rejected
    daemon.wait_state(lambda st: int(st.get("reloads", 0)) > before)
    assert daemon.state()["last_reload"]["result"] == "rejected"

    r = _xdplb(daemon, "maintenance", "on", "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert bird.route_count(birdd.sock, PROTOCOL_V4) == 0
    assert daemon.state()["announce"]["maintenance"] is True
    assert daemon.state()["last_reload"]["result"] == "rejected"  # the file is still bad

    r = _xdplb(daemon, "maintenance", "off", "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert bird.route_count(birdd.sock, PROTOCOL_V4) == 1
    assert "10.50.0.100/32" in birdd.routes(PROTOCOL_V4)
