"""Run the real xdplbd in a private network namespace with a veth pair.

Each daemon gets its own pin and state directory (several can run at once)
and a real NOTIFY_SOCKET: the tests read sd_notify datagrams as systemd would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

import pytest

from xdplbd.core.model import Tunables
from xdplbd.kernel import libbpf, loader
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.netns import in_netns
from xdplbd.service.statefile import read_state

# Small maps keep each start cheap; the data plane is the same code.
TUNABLES = {"max_vips": 64, "max_reals": 256, "conntrack_size": 65536, "ring_size": 65537,
            "udp_timeout": 30}
TUNABLES_OBJ = Tunables(**TUNABLES)
LB_IF, PEER_IF = "lb0", "peer0"


def make_config(vips: List[Dict[str, Any]], interface: str = LB_IF) -> str:
    return json.dumps({"interface": interface, "xdp_mode": "native", "tunables": TUNABLES,
                       "vips": vips}, indent=2)


def vip4(addr: str = "10.50.0.100", port: int = 80, proto: str = "tcp",
         reals: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    return {"vip": addr, "port": port, "protocol": proto, "reals": reals or []}


def real(n: int, weight: int = 1) -> Dict[str, Any]:
    return {"ip": f"10.50.0.{10 + n}", "mac": f"02:00:00:50:00:{n:02x}", "weight": weight}


LB_MAC = "02:00:00:00:00:01"  # the LB interface's MAC in every test namespace


class Netns:
    def __init__(self) -> None:
        self.name = f"xdd-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        # No IPv6 autoconf chatter: the tests count every frame the LB sees.
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        self.ip("link", "add", LB_IF, "type", "veth", "peer", "name", PEER_IF)
        # A known MAC: the data plane balances only frames addressed to it.
        self.ip("link", "set", LB_IF, "address", LB_MAC)
        self.ip("link", "set", LB_IF, "up")
        self.ip("link", "set", PEER_IF, "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def xdp_prog_id(self, ifname: str = LB_IF) -> int:
        from xdplbd.kernel import iface

        with in_netns(self.name):
            return libbpf.xdp_query(iface.ifindex(ifname)).prog_id

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Daemon:
    """One xdplbd process plus its config, pins, state and notify socket."""

    def __init__(self, netns: Netns, workdir: str, pin_dir: Optional[str] = None) -> None:
        self.netns = netns
        self.dir = workdir
        self.config = os.path.join(workdir, "conf", "lb_conf.json")
        os.makedirs(os.path.dirname(self.config), exist_ok=True)
        self.pin_dir = pin_dir or f"/sys/fs/bpf/xdd-{uuid.uuid4().hex[:8]}"
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "daemon.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.notify_path = os.path.join(workdir, "notify.sock")
        self.notify: Optional[socket.socket] = None
        self.messages: List[str] = []

    def write_config(self, text: str) -> None:
        tmp = self.config + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def start(self, wait: bool = True, env: Optional[Dict[str, str]] = None,
              args: Optional[List[str]] = None) -> None:
        if self.notify is None:
            if os.path.exists(self.notify_path):
                os.unlink(self.notify_path)
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(self.notify_path)
        # Drop what an earlier process sent and nobody read (a READY=1 from its
        # reloads would otherwise pass for this one's).
        self.notify.setblocking(False)
        try:
            while True:
                self.notify.recv(4096)
        except BlockingIOError:
            pass
        self.messages = []
        full_env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        cmd = ["nsenter", f"--net=/run/netns/{self.netns.name}", sys.executable, "-m",
               "xdplbd.service.daemon", "-c", self.config, "--pin-dir", self.pin_dir, "--state-dir",
               self.state_dir, *(args or [])]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            self.wait_message("READY=1", timeout=60)

    def recv(self, timeout: float) -> Optional[str]:
        assert self.notify is not None
        self.notify.settimeout(timeout)
        try:
            msg = self.notify.recv(4096).decode()
        except socket.timeout:
            return None
        self.messages.append(msg)
        return msg

    def wait_message(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and needle in msg.split("\n"):
                return msg
            if msg is None and self.proc is not None and self.proc.poll() is not None:
                break
        raise AssertionError(f"no {needle!r} from xdplbd within {timeout}s; "
                             f"got {self.messages}; log:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def state(self) -> Dict[str, Any]:
        return read_state(self.state_dir)

    def wait_state(self, pred: Any, timeout: float = 20) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st and pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"state never matched; last {self.state()}\n{self.read_log()}")

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=20)
        finally:
            self.log.close()
        self.proc = None
        return rc

    def dataplane(self) -> DataPlane:
        return DataPlane(self.pin_dir, TUNABLES_OBJ)

    def dataplane_for(self, tunables: Tunables) -> DataPlane:
        return DataPlane(self.pin_dir, tunables)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()
        loader.remove_pins(self.pin_dir)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def workdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="xdplbd-test-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(netns: Netns, workdir: str) -> Iterator[Daemon]:
    d = Daemon(netns, workdir)
    d.write_config(make_config([vip4(reals=[real(1), real(2), real(3)])]))
    try:
        yield d
    finally:
        d.cleanup()


def dump_maps(d: Daemon) -> Dict[str, Any]:
    """Everything the control plane writes, as bytes, for exact comparisons."""
    with d.dataplane() as dp:
        rings = {}
        for vip_id in dp.ring_ids():
            rings[vip_id] = dp.ring(vip_id)
        return {
            "vips": sorted(dp.maps["vips"].items()),
            "backends": dp.maps["backends"].lookup_array_all(),
            "rings": rings,
            "settings": dp.settings(),
        }

