"""The BIRD control-socket client and the announcer, against a real BIRD 2.

BIRD runs in the host namespace with only a device protocol and our include:
no BGP, no kernel protocol, so it touches no routing table.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from xdplbd.core.announce import PROTOCOL_V4, PROTOCOL_V6, decide, render_bird
from xdplbd.core.effective import effective
from xdplbd.core.model import BirdAnnounce, Config, Real, Vip, VipKey
from xdplbd.service import bird
from xdplbd.service.announcer import Announcer, set_maintenance

IP = ipaddress.ip_address
KEY = VipKey(IP("192.0.2.100"), 80, "tcp")
KEY6 = VipKey(IP("2001:db8::100"), 80, "tcp")
REALS = (Real(IP("192.0.2.11"), "02:00:00:00:00:0b", 1),)
CFG = Config(vips=(Vip(KEY, REALS), Vip(KEY6, REALS)))


class Bird:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.fragment = d / "xdplb-vips.conf"
        self.sock = str(d / "bird.ctl")
        self.conf = d / "bird.conf"
        self.conf.write_text(f'router id 192.0.2.1;\nprotocol device {{}}\n'
                             f'include "{self.fragment}";\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert shutil.which("bird"), "bird (Debian bird2) missing: run `make setup`"
        self.proc = subprocess.Popen(["bird", "-f", "-c", str(self.conf), "-s", self.sock,
                                      "-P", str(self.dir / "bird.pid")])
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            assert time.monotonic() < deadline, "BIRD did not open its socket"
            assert self.proc.poll() is None, "BIRD exited"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    def routes(self, proto: str) -> str:
        return "\n".join(t for _, t in bird.command(self.sock, f"show route protocol {proto}"))


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Bird]:
    x = Bird(tmp_path)
    x.fragment.write_text(render_bird(()))  # BIRD refuses to start without the include
    yield x
    x.stop()


def test_configure_announces_and_withdraws(b: Bird) -> None:
    b.start()
    d = decide(effective(CFG, {}, {}), attached=True, maintenance=False)
    assert bird.write_atomically(str(b.fragment), render_bird(d.routes))
    assert not bird.write_atomically(str(b.fragment), render_bird(d.routes))  # unchanged
    assert "Reconfigured" in bird.configure(b.sock)
    assert bird.route_count(b.sock, PROTOCOL_V4) == 1
    assert bird.route_count(b.sock, PROTOCOL_V6) == 1
    assert "192.0.2.100/32" in b.routes(PROTOCOL_V4)
    bird.write_atomically(str(b.fragment), render_bird(()))
    bird.configure(b.sock)
    assert bird.route_count(b.sock, PROTOCOL_V4) == bird.route_count(b.sock, PROTOCOL_V6) == 0


def test_last_resort_routes_carry_the_med(b: Bird) -> None:
    b.start()
    d = decide(effective(CFG, {KEY: {REALS[0].ip: "down"}}, {}), True, False)
    bird.write_atomically(str(b.fragment), render_bird(d.routes))
    bird.configure(b.sock)
    out = "\n".join(t for _, t in bird.command(b.sock, f"show route protocol {PROTOCOL_V4} all"))
    assert "BGP.med: 4000000000" in out, out


def test_errors_name_the_socket_and_the_reason(b: Bird, tmp_path: Path) -> None:
    with pytest.raises(bird.BirdError, match=r"cannot reach BIRD at .*bird.ctl"):
        bird.configure(b.sock)
    b.start()
    b.fragment.write_text("protocol static xdplb_vips4 { ipv4; route nonsense; }\n")
    with pytest.raises(bird.BirdError, match="BIRD refused `configure`"):
        bird.configure(b.sock)


def test_the_announcer_retries_until_bird_is_up_and_follows_maintenance(
        b: Bird, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xdplbd")
    state = tmp_path / "state"
    a = Announcer(str(state))
    cfg = BirdAnnounce(file=str(b.fragment), socket=b.sock)
    eff = effective(CFG, {}, {})
    a.update(cfg, eff, attached=True)  # BIRD is down: logged, retried, never raised
    assert a.error.startswith("cannot reach BIRD") and a.retry_due
    assert "192.0.2.100/32" in b.fragment.read_text()  # the file is written regardless
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1
    b.start()
    a.retry_due = time.monotonic()
    a.retry()
    assert a.error == "" and a.configured_at and bird.route_count(b.sock, PROTOCOL_V4) == 1
    set_maintenance(str(state), True)
    a.update(cfg, eff, attached=True)
    assert bird.route_count(b.sock, PROTOCOL_V4) == 0 and a.status()["maintenance"] is True
    set_maintenance(str(state), False)
    a.update(cfg, eff, attached=False)  # not attached: still nothing
    assert bird.route_count(b.sock, PROTOCOL_V4) == 0
    a.update(cfg, eff, attached=True)
    assert bird.route_count(b.sock, PROTOCOL_V4) == 1
    a.update(None, eff, attached=True)  # the config drops the announcement: emptied
    assert bird.route_count(b.sock, PROTOCOL_V4) == 0


def test_the_shipped_example_config_parses(tmp_path: Path) -> None:
    """etc/xdplb/bird.conf.example is valid BIRD 2 with the fragment xdplbd writes."""
    root = Path(__file__).resolve().parents[2]
    frag = tmp_path / "xdplb-vips.conf"
    frag.write_text(render_bird(decide(effective(CFG, {}, {}), True, False).routes))
    text = (root / "etc/xdplb/bird.conf.example").read_text()
    assert 'include "/etc/bird/xdplb-vips.conf";' in text
    conf = tmp_path / "bird.conf"
    conf.write_text(text.replace("/etc/bird/xdplb-vips.conf", str(frag)))
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for needle in ('export where proto = "xdplb_vips4"', 'export where proto = "xdplb_vips6"',
                   'export where proto != "xdplb_vips4"', "bfd on"):
        assert needle in text
