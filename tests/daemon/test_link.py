"""The LB's own link: a changed LB MAC is followed into the data plane's settings."""

from __future__ import annotations

import time

from tests.daemon.conftest import LB_IF, Daemon


def test_lb_mac_change_is_followed(daemon: Daemon) -> None:
    daemon.start()
    new = "02:14:00:00:00:99"
    daemon.netns.ip("link", "set", LB_IF, "address", new)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        with daemon.dataplane() as dp:
            if dp.settings()[0] == new:
                break
        time.sleep(0.01)
    with daemon.dataplane() as dp:
        assert dp.settings()[0] == new, daemon.read_log()
    st = daemon.wait_state(lambda s: s["lb_mac"] == new)
    assert "interface_problem" not in st
    lines = [ln for ln in daemon.read_log().splitlines() if f"-> {new}" in ln]
    assert len(lines) == 1 and f"interface {LB_IF}: MAC" in lines[0], lines
