"""`xdplb start` mode logs to syslog: checked against a real datagram socket at
/dev/log, inside a private mount namespace (tests/tools/syslog_probe.py), so the
host's /dev is never touched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Iterator

import pytest

from tests.daemon.conftest import Netns, make_config, real, vip4
from xdplbd.kernel import loader


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


def test_start_mode_logs_to_syslog(netns: Netns, tmp_path_factory: pytest.TempPathFactory
                                   ) -> None:
    work = str(tmp_path_factory.mktemp("syslog"))
    conf_dir = os.path.join(work, "conf")
    os.makedirs(conf_dir)
    config = os.path.join(conf_dir, "lb_conf.json")
    with open(config, "w") as f:
        f.write(make_config([vip4(reals=[real(1), real(2)])]))
    pin_dir = f"/sys/fs/bpf/sksyslog{os.getpid()}"
    probe = os.path.join(os.path.dirname(__file__), "syslog_probe.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    host_log = os.path.lexists("/dev/log")
    try:
        p = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns.name}", "unshare", "-m", sys.executable,
             probe, config, pin_dir, os.path.join(work, "state"), work, "{ not json"],
            capture_output=True, text=True, timeout=120, cwd=root,
            env={**os.environ, "PYTHONPATH": root})
        assert p.returncode == 0, p.stdout + p.stderr
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith('"')]
        # SysLogHandler: "<PRI>ident[pid]: message" and a NUL, facility user (1).
        pat = re.compile(r"^<(\d+)>xdplbd\[(\d+)\]: (.*)\x00$", re.S)
        parsed = [pat.match(x) for x in lines]
        assert lines and all(parsed), lines
        msgs = [(int(m.group(1)), m.group(3)) for m in parsed if m]
        assert len({m.group(2) for m in parsed if m}) == 1  # one daemon
        assert any(pri == 14 and msg.startswith("ready on lb0") for pri, msg in msgs), msgs
        assert any(pri == 11 and "config rejected" in msg for pri, msg in msgs), msgs
        assert any(pri == 14 and msg.startswith("stopping on SIGTERM") for pri, msg in msgs)
        assert os.path.lexists("/dev/log") == host_log  # the host's /dev: untouched
    finally:
        subprocess.run(["nsenter", f"--net=/run/netns/{netns.name}", sys.executable, "-m",
                        "xdplbd.cli", "detach", "-i", "lb0", "--pin-dir", pin_dir,
                        "--state-dir", os.path.join(work, "state")], capture_output=True,
                       check=False, cwd=root)
        loader.remove_pins(pin_dir)
