"""`xdplb top` in a real terminal (tmux), with real traffic through the lab."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import List, Optional

import pytest

from tests.tools.conftest import LabDaemon, Tmux, tmux_available

pytestmark = pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")


def _row(screen: str, label: str) -> Optional[List[str]]:
    """The cells of the table row starting with `label` (columns split on │)."""
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == label:
            return cells[1:-1]
    return None


def _header(screen: str) -> List[str]:
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == "VIP / real":
            return cells[1:-1]
    raise AssertionError(f"no VIP table:\n{screen}")


def _nonzero(cell: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+[kMGT]?b?", cell)) and cell.rstrip("kMGTb") not in (
        "0", "0.0")


def test_top_shows_vips_reals_and_live_rates(lab_daemon: LabDaemon) -> None:
    d = lab_daemon
    lab = d.lab
    vip_row = f"{lab.vip4}:{lab.spec.http_port}/tcp"
    # Real traffic: HTTP through the VIP from the client, for as long as the test needs.
    traffic = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.ns_client}", "sh", "-c",
         f"while :; do curl -s -o /dev/null --max-time 2 http://{lab.vip4}/; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tm = Tmux("top")
    try:
        tm.start(["nsenter", f"--net=/run/netns/{d.ns}", sys.executable, "-m", "xdplbd.cli",
                  "top", "--pin-dir", d.pin_dir, "--state-dir", d.state_dir])

        def rate_shown(screen: str) -> bool:
            row = _row(screen, vip_row)
            return row is not None and _nonzero(row[_header(screen).index("pkt/s")])

        screen = tm.wait_for(rate_shown, timeout=20)
        cols = _header(screen)
        assert cols == ["VIP / real", "weight", "state", "health", "pkt/s", "bit/s", "flows",
                        "packets", "bytes"], screen
        row = _row(screen, vip_row)
        assert row is not None
        assert _nonzero(row[cols.index("bit/s")]), row
        assert _nonzero(row[cols.index("flows")]), row
        # Every VIP of the config has a row; every real of the lab shows under the VIP.
        for v in d.doc["vips"]:
            host = f"[{v['vip']}]" if ":" in v["vip"] else v["vip"]
            assert _row(screen, f"{host}:{v['port']}/{v['protocol']}") is not None, v
        assert any(_row(screen, f"{b} {lab.real_ip4(r)}") is not None
                   for r in lab.real_names for b in "├└")
        # The header: attach mode and generation; the outcome counters.
        st = d.state()
        assert "eth0: native XDP" in screen
        assert f"generation {st['generation']}" in screen
        for name in ("pass", "drop", "no real", "ct hit", "ct miss", "icmp routed",
                     "fragments", "malformed"):
            assert name in screen, name
        assert _row(screen, "pkt/s") is not None and _row(screen, "packets") is not None
        tm.keys("q")
        assert tm.wait_dead() == 0
    finally:
        traffic.terminate()
        traffic.wait()
        tm.kill()


def test_top_exits_cleanly_on_ctrl_c(lab_daemon: LabDaemon) -> None:
    d = lab_daemon
    tm = Tmux("topc")
    try:
        tm.start(["nsenter", f"--net=/run/netns/{d.ns}", sys.executable, "-m", "xdplbd.cli",
                  "top", "--pin-dir", d.pin_dir, "--state-dir", d.state_dir, "--interval",
                  "0.5"])
        tm.wait_for(lambda s: "VIPs and reals" in s)
        time.sleep(0.3)
        tm.keys("C-c")
        assert tm.wait_dead() == 0
        assert "Traceback" not in tm.capture()
    finally:
        tm.kill()


def test_top_once_prints_one_frame(lab_daemon: LabDaemon) -> None:
    d = lab_daemon
    r = d.cli("top", "--once", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    assert "VIPs and reals" in r.stdout and f"{d.lab.vip4}:80/tcp" in r.stdout


def test_top_stats_status_never_import_bcc(lab_daemon: LabDaemon) -> None:
    """The read side goes through libbpf only: bcc costs ~70 MB and a second."""
    d = lab_daemon
    code = (
        "import sys\n"
        "from xdplbd.cli import commands\n"
        f"dirs = ['--pin-dir', {d.pin_dir!r}, '--state-dir', {d.state_dir!r}]\n"
        "for cmd in (['top', '--once', '--interval', '0.1'], ['stats', '--json'],\n"
        "            ['status', '--json']):\n"
        "    assert commands.main(cmd + dirs) == 0, cmd\n"
        "assert 'bcc' not in sys.modules, 'bcc was imported'\n"
    )
    r = subprocess.run(["nsenter", f"--net=/run/netns/{d.ns}", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
