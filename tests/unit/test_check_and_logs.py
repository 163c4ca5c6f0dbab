"""`xdplb check` and the journald log format: pure enough to run without root."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from xdplbd.service.logsetup import JournalFormatter

FIXTURE = Path(__file__).parent.parent / "fixtures" / "original_readme.json"


def xdplb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdplbd.cli", *args], capture_output=True,
                          text=True, check=False)


def test_check_accepts_the_original_readme_example() -> None:
    r = xdplb("check", str(FIXTURE))
    assert r.returncode == 0, r.stderr
    assert "OK (1 VIPs, 2 reals)" in r.stdout


def test_check_rejects_naming_file_field_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "lb_conf.json"
    bad.write_text(FIXTURE.read_text().replace("00:0c:29:10:5b:36", "00:0c:29:zz:5b:36")
                   .replace('"port": 8080', '"port": 80800'))
    os.chmod(bad, 0o644)
    r = xdplb("check", str(bad))
    assert r.returncode == 1
    assert f'{bad}: vips[0].reals[1].mac: "00:0c:29:zz:5b:36" is not a MAC address' in r.stderr
    assert f"{bad}: vips[0].port: 80800 is out of range 1..65535" in r.stderr


def test_check_plan_against_no_live_maps_adds_everything(tmp_path: Path) -> None:
    r = xdplb("check", "--plan", "--pin-dir", str(tmp_path / "none"), "--state-dir",
              str(tmp_path), str(FIXTURE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "vip 192.168.75.105:8080/tcp: added, 2 reals, 65537 ring slots",
        "  +real 192.168.75.18",
        "  +real 192.168.75.92",
    ]


def test_journal_lines_carry_syslog_priorities() -> None:
    fmt = JournalFormatter()

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("xdplbd", level, __file__, 1, msg, None, None))

    assert line(logging.INFO, "vip 10.0.0.100:80/tcp: +real 10.0.0.12") == \
        "<6>vip 10.0.0.100:80/tcp: +real 10.0.0.12"
    assert line(logging.ERROR, "a\nb") == "<3>a\n<3>b"  # one journal entry per line
    assert line(logging.WARNING, "w").startswith("<4>")
    assert line(logging.DEBUG, "d").startswith("<7>")
