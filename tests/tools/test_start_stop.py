"""The original CLI kept: `xdplb start` / `stop` / `debug`, in a netns with a veth."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, List

import pytest

from tests.tools.conftest import Tmux, gone, proc_state, run_cli, tmux_available
from xdplbd.core.model import Tunables
from xdplbd.kernel import iface, libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.loader import remove_pins
from xdplbd.kernel.netns import in_netns
from xdplbd.service import daemonize
from xdplbd.service.statefile import read_state

TUNABLES = {"max_vips": 16, "max_reals": 64, "conntrack_size": 4096, "ring_size": 1009,
            "udp_timeout": 30}


@dataclass
class Env:
    ns: str
    dir: str
    config: str
    pin_dir: str
    state_dir: str
    pid_file: str
    log_file: str

    def dirs(self) -> List[str]:
        return ["--pin-dir", self.pin_dir, "--state-dir", self.state_dir]

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.ns, "start", "-i", "eth0", "-c", self.config, *self.dirs(),
                       "--pid-file", self.pid_file, "--log-file", self.log_file, *extra)

    def stop(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.ns, "stop", "--pid-file", self.pid_file, *self.dirs(), *extra)

    def attached_prog(self) -> int:
        with in_netns(self.ns):
            return libbpf.xdp_query(iface.ifindex("eth0")).prog_id

    def pid_file_pid(self) -> int:
        with open(self.pid_file) as f:
            return int(f.read())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ns = f"xdt-{os.getpid()}"
    work = str(tmp_path_factory.mktemp("startstop"))
    os.chmod(work, 0o755)
    e = Env(ns, work, os.path.join(work, "lb_conf.json"), f"/sys/fs/bpf/xdplb-ss-{os.getpid()}",
            os.path.join(work, "state"), os.path.join(work, "run", "xdplb.pid"),
            os.path.join(work, "log", "xdplb.log"))
    with open(e.config, "w") as f:
        json.dump({"xdp_mode": "native", "tunables": TUNABLES, "vips": [
            {"vip": "10.60.0.100", "port": 80, "protocol": "tcp", "reals": [
                {"ip": "10.60.0.11", "mac": "02:00:00:60:00:11"},
                {"ip": "10.60.0.12", "mac": "02:00:00:60:00:12", "weight": 2}]}]}, f)
    os.chmod(e.config, 0o644)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for args in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                     ["link", "set", "eth0", "up"], ["link", "set", "eth1", "up"]):
            subprocess.run(["ip", "-n", ns, *args], check=True)
        yield e
    finally:
        for pid in daemonize.daemons_on(e.pin_dir):
            os.kill(pid, 9)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        remove_pins(e.pin_dir)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def stopped(env: Env) -> Iterator[Env]:
    """Each test starts with no daemon, and leaves none."""
    yield env
    run_cli(env.ns, "stop", "--pid-file", env.pid_file, *env.dirs())
    for pid in daemonize.daemons_on(env.pin_dir):
        os.kill(pid, 9)


def _stat(pid: int) -> List[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def test_start_returns_ready_and_stop_leaves_nothing(stopped: Env) -> None:
    e = stopped
    r = e.start()
    assert r.returncode == 0, r.stderr
    pid = e.pid_file_pid()
    assert f"xdplbd started (pid {pid}) on eth0 (native XDP)" in r.stdout
    # Ready on return: state written by this very process, maps filled, program attached.
    st = read_state(e.state_dir)
    assert st["pid"] == pid and st["applied_at"]
    assert e.attached_prog() == st["prog_id"]
    with DataPlane(e.pin_dir, Tunables(**TUNABLES)) as dp:
        live = dp.read_live()
    assert [str(v.key) for v in live.vips] == ["10.60.0.100:80/tcp"]
    assert sorted(b.weight for b in live.vips[0].backends) == [1, 2]
    # Daemonized: double fork (not our child, not a session leader, no terminal).
    stat = _stat(pid)
    ppid, sid, tty = int(stat[1]), int(stat[3]), int(stat[4])
    assert ppid != os.getpid() and sid != pid and sid != os.getsid(0) and tty == 0
    argv = daemonize.proc_argv(pid)
    assert argv is not None and "--syslog" in argv and "--log-file" in argv
    with open(e.log_file) as f:
        assert "ready on eth0 (native XDP)" in f.read()
    assert os.path.realpath(f"/proc/{pid}/fd/2") == e.log_file  # tracebacks land there too

    r = e.stop()
    assert r.returncode == 0, r.stderr
    assert f"xdplbd (pid {pid}) stopped" in r.stdout
    assert gone(pid)
    assert not os.path.exists(e.pid_file)
    assert daemonize.daemons_on(e.pin_dir) == []
    # SIGTERM leaves the data plane attached (fail-static).
    assert e.attached_prog() == st["prog_id"]
    # status agrees: not running (exit 3), still attached.
    s = run_cli(e.ns, "status", "--json", *e.dirs())
    assert s.returncode == 3
    data = json.loads(s.stdout)
    assert data["daemon"]["running"] is False and data["dataplane"]["attached"] is True
    # A second stop is a no-op.
    r = e.stop()
    assert r.returncode == 0 and "not running" in r.stdout


def test_a_second_start_on_the_same_pins_is_refused(stopped: Env) -> None:
    e = stopped
    assert e.start().returncode == 0
    pid = e.pid_file_pid()
    other_pid_file = os.path.join(e.dir, "run", "other.pid")
    r = run_cli(e.ns, "start", "-i", "eth0", "-c", e.config, *e.dirs(), "--pid-file",
                other_pid_file, "--log-file", e.log_file)
    assert r.returncode == 1
    assert f"already running on {e.pin_dir} (pid {pid}" in r.stderr
    assert not os.path.exists(other_pid_file)
    # The same PID file, other pins and state: refused too (it would lose the first).
    r = run_cli(e.ns, "start", "-i", "eth0", "-c", e.config, "--pin-dir", e.pin_dir + "-b",
                "--state-dir", e.state_dir + "-b", "--pid-file", e.pid_file, "--log-file",
                e.log_file)
    assert r.returncode == 1 and f"already running (pid {pid}, PID file" in r.stderr
    assert not os.path.exists(e.pin_dir + "-b")
    # The same state directory, other pins: refused (state.toml has one writer).
    r = run_cli(e.ns, "start", "-i", "eth0", "-c", e.config, "--pin-dir", e.pin_dir + "-c",
                "--state-dir", e.state_dir, "--pid-file", other_pid_file, "--log-file",
                e.log_file)
    assert r.returncode == 1 and f"with state in {e.state_dir}" in r.stderr
    assert not os.path.exists(e.pin_dir + "-c")
    # debug refuses as well.
    r = run_cli(e.ns, "debug", "-i", "eth0", "-c", e.config, *e.dirs(), "--log-file",
                e.log_file)
    assert r.returncode == 1 and "already running" in r.stderr
    assert daemonize.daemons_on(e.pin_dir) == [pid] and e.pid_file_pid() == pid


def test_a_stale_pid_file_does_not_block_start(stopped: Env) -> None:
    e = stopped
    os.makedirs(os.path.dirname(e.pid_file), exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    for stale in (int(dead.stdout), os.getpid()):  # a dead pid; a live pid that is not xdplbd
        with open(e.pid_file, "w") as f:
            f.write(f"{stale}\n")
        r = e.stop()
        assert r.returncode == 0 and "removed stale PID file" in r.stdout
        assert not os.path.exists(e.pid_file)
    with open(e.pid_file, "w") as f:
        f.write(f"{int(dead.stdout)}\n")
    r = e.start()
    assert r.returncode == 0, r.stderr
    pid = e.pid_file_pid()
    assert pid != int(dead.stdout) and daemonize.running(pid)
    assert e.stop().returncode == 0 and gone(pid)


def test_a_failing_start_reports_the_daemon_error(stopped: Env) -> None:
    e = stopped
    r = run_cli(e.ns, "start", "-i", "nope0", "-c", e.config, *e.dirs(), "--pid-file",
                e.pid_file, "--log-file", e.log_file)
    assert r.returncode == 1
    assert "xdplbd failed to start" in r.stderr
    assert "interface 'nope0' not found" in r.stderr  # the last lines of its log
    assert not os.path.exists(e.pid_file)
    assert daemonize.daemons_on(e.pin_dir) == []


@pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")
def test_debug_runs_the_daemon_under_the_dashboard_and_q_stops_it(stopped: Env) -> None:
    e = stopped
    tm = Tmux("debug")
    try:
        tm.start(["nsenter", f"--net=/run/netns/{e.ns}", sys.executable, "-m", "xdplbd.cli",
                  "debug", "-i", "eth0", "-c", e.config, *e.dirs(), "--log-file", e.log_file])
        screen = tm.wait_for(lambda s: "xdplb debug" in s and "10.60.0.100:80/tcp" in s)
        assert "eth0: native XDP" in screen
        assert "daemon log" in screen and "ready on eth0" in screen
        pid = int(read_state(e.state_dir)["pid"])
        assert daemonize.running(pid)
        assert f"xdplb debug (pid {pid})" in screen
        prog = e.attached_prog()
        assert prog
        tm.keys("q")
        assert tm.wait_dead() == 0
        assert gone(pid), proc_state(pid)
        assert daemonize.daemons_on(e.pin_dir) == []
        assert "xdplbd stopped; the data plane stays attached" in tm.capture()
        assert e.attached_prog() == prog
    finally:
        tm.kill()
