"""Operator tools against a real xdplbd in the namespace lab (no mocks of BPF).

One lab and one daemon serve the status/stats/explain/metrics/top tests: the
daemon attaches to the LB's eth0, with two extra VIPs (TEST_VIP) that no real
traffic reaches, so counts driven through BPF_PROG_TEST_RUN are exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from xdplbd.core import schema
from xdplbd.core.model import Tunables
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.loader import remove_pins
from xdplbd.lab.topology import Lab, LabSpec, in_netns, nsenter_cmd
from xdplbd.service.statefile import read_state

PREFIX = f"tt{os.getpid()}"
TUNABLES = {"max_vips": 64, "max_reals": 256, "conntrack_size": 65536, "ring_size": 65537,
            "udp_timeout": 30}
TEST_VIP = "10.99.0.200"  # on no interface: only test_run frames reach it
TEST_TCP_PORT, TEST_UDP_PORT = 8080, 5300
METRICS_LISTEN = "127.0.0.1:9110"
CLIENT_MAC = "02:00:00:00:00:99"
ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx"}


def run_cli(ns: Optional[str], *args: str, timeout: float = 60.0,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """`xdplb ARGS` (this checkout's), in netns `ns` if given."""
    argv = [sys.executable, "-m", "xdplbd.cli", *args]
    if ns:
        argv = nsenter_cmd(ns, argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def write_config(path: str, doc: Dict[str, Any]) -> None:
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def proc_state(pid: int) -> Optional[str]:
    """The process's state letter (R, S, Z...), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def gone(pid: int) -> bool:
    """Exited: absent, or a zombie (pid 1 here does not reap orphans)."""
    return proc_state(pid) in (None, "Z", "X")


class LabDaemon:
    """xdplbd on the lab LB's eth0, run as the brief says: nsenter + its own pins."""

    def __init__(self, lab: Lab, workdir: str) -> None:
        self.lab = lab
        self.dir = workdir
        self.ns = lab.ns_lb
        self.pin_dir = f"/sys/fs/bpf/xdplb-tools-{os.getpid()}"
        self.state_dir = os.path.join(workdir, "state")
        self.config = os.path.join(workdir, "lb_conf.json")
        self.log_path = os.path.join(workdir, "daemon.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.macs = lab.real_macs()
        self.mac_to_ip = {m: lab.real_ip4(r) for r, m in self.macs.items()}
        self.doc = self.config_doc()

    def config_doc(self, metrics: Optional[str] = METRICS_LISTEN) -> Dict[str, Any]:
        doc = self.lab.config()
        # No mac, as in the lab's own VIPs (a real's mac is given everywhere or nowhere):
        # the daemon resolves the same MACs from the neighbour table.
        reals = [{"ip": self.lab.real_ip4(r), "weight": 1} for r in self.lab.real_names]
        doc["vips"] += [
            {"vip": TEST_VIP, "port": TEST_TCP_PORT, "protocol": "tcp", "reals": reals},
            {"vip": TEST_VIP, "port": TEST_UDP_PORT, "protocol": "udp", "reals": reals},
        ]
        doc["tunables"] = TUNABLES
        if metrics:
            doc["metrics"] = {"listen": metrics}
        return doc

    def start(self) -> None:
        remove_pins(self.pin_dir)
        write_config(self.config, self.doc)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            nsenter_cmd(self.ns, [sys.executable, "-m", "xdplbd.service.daemon", "-c", self.config,
                                  "--pin-dir", self.pin_dir, "--state-dir", self.state_dir]),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = read_state(self.state_dir)
            if st.get("pid") == self.proc.pid and st.get("applied_at"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"xdplbd did not start: {self.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def state(self) -> Dict[str, Any]:
        return read_state(self.state_dir)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_cli(self.ns, *args, "--pin-dir", self.pin_dir, "--state-dir",
                       self.state_dir, check=check)

    def dataplane(self) -> DataPlane:
        return DataPlane(self.pin_dir, Tunables(**TUNABLES))

    def prog_fd(self) -> int:
        return libbpf.obj_get(os.path.join(self.pin_dir, "prog_" + self.state()["source_digest"]))

    def wait_reloads(self, n: int, timeout: float = 10.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if int(st.get("reloads", 0)) >= n:
                return st
            time.sleep(0.05)
        raise AssertionError(f"no reload #{n}: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            run_cli(self.ns, "detach", "--pin-dir", self.pin_dir, "--state-dir", self.state_dir,
                    "-i", "eth0")
        remove_pins(self.pin_dir)


class Driver:
    """Frames through the daemon's pinned program with BPF_PROG_TEST_RUN, in the LB's
    netns (where the program is attached, so no dispatcher RCU wait per call)."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self.fd = daemon.prog_fd()
        self.lb_mac = daemon.state()["lb_mac"]

    def close(self) -> None:
        os.close(self.fd)

    def run(self, frame: bytes) -> Tuple[str, Optional[str]]:
        """(action, real IP the frame was sent to or None)."""
        with in_netns(self.d.ns):
            r = libbpf.test_run(self.fd, frame)
        action = ACTIONS.get(r.retval, str(r.retval))
        real = self.d.mac_to_ip.get(schema.mac_str(r.data[0:6])) if action == "tx" else None
        return action, real

    def frame(self, src: str, sport: int, dst: str, dport: int, proto: str,
              flags: str = "A", payload: bytes = b"x" * 20) -> bytes:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.l2 import Ether

        l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == "tcp" else \
            UDP(sport=sport, dport=dport)
        return bytes(Ether(src=CLIENT_MAC, dst=self.lb_mac) / IP(src=src, dst=dst) / l4
                     / payload)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    assert os.geteuid() == 0, "the tools tests need root (namespaces, XDP)"
    lab = Lab(LabSpec(prefix=PREFIX, n_reals=2))
    request.addfinalizer(lab.down)
    lab.up()
    yield lab


@pytest.fixture(scope="session")
def lab_daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDaemon]:
    workdir = str(tmp_path_factory.mktemp("tools-daemon"))
    os.chmod(workdir, 0o755)
    d = LabDaemon(lab, workdir)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def driver(lab_daemon: LabDaemon) -> Iterator[Driver]:
    drv = Driver(lab_daemon)
    try:
        yield drv
    finally:
        drv.close()


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


class Tmux:
    """A private tmux server (own socket): one detached session, its pane captured."""

    def __init__(self, name: str, width: int = 160, height: int = 50) -> None:
        self.sock = f"xdplb-{name}-{os.getpid()}"
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def start(self, argv: List[str]) -> None:
        import shlex

        # A COLUMNS/LINES inherited from the test's environment would override the
        # pane's real size for rich (and any curses program).
        cmd = "env -u COLUMNS -u LINES " + " ".join(shlex.quote(a) for a in argv)
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(self.width),
                  "-y", str(self.height), cmd)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def dead(self) -> Optional[int]:
        """The command's exit status once it has exited, else None."""
        out = self.tmux("display-message", "-p", "-t", "t", "#{pane_dead} #{pane_dead_status}")
        dead, _, status = out.strip().partition(" ")
        return int(status or 0) if dead == "1" else None

    def wait_for(self, pred: Any, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if pred(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"pane never matched; it shows:\n{screen}")

    def wait_dead(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.dead()
            if code is not None:
                return code
            time.sleep(0.1)
        raise AssertionError(f"still running; pane:\n{self.capture()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True,
                       check=False, timeout=10)
