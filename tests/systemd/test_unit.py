"""systemd/xdplb.service under a real systemd: the operator's workflow, end to end.

One container for the module, used in order, the way an operator would:
`make install` (the real one, inside), edit /etc/xdplb/lb_conf.json,
`systemctl enable --now xdplb`, edits, `systemctl reload xdplb`, a rejected
config, `systemctl restart` under a packet stream, `journalctl -u xdplb`,
`systemctl stop`, `xdplb detach` and `make uninstall`.

The data plane runs on a veth pair inside the container's private netns:
xdplbd attaches to ``xlb0``; ``xlb1`` is the "wire", with a trivial XDP_PASS
program so the frames xdplbd XDP_TXes back out of xlb0 are delivered to it
(DESIGN.md section 3). A sender on xlb1 writes VIP frames with an AF_PACKET
socket and counts the rewritten frames that come back.

Debian 12's systemd is 252 (no Type=notify-reload); the unit's ExecReload= is
`xdplb reload`, which waits for the daemon, so `systemctl reload` returns once
the reload has been applied or rejected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .container import Container, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = "xdplb.service"
CONF = "/etc/xdplb/lb_conf.json"
STATE = "/run/xdplb/state.toml"
PINS = "/sys/fs/bpf/xdplb"
SRC = "/root/xdplb-src"
LB_IF, WIRE_IF = "xlb0", "xlb1"
VIP = "10.0.0.100"
MACS = {f"10.0.0.{n}": f"02:00:00:00:00:{n:02x}" for n in range(10, 30)}
#: what `make install` needs from the checkout (a copy without .venv, .git, caches)
INSTALL_TREE = ("Makefile", "pyproject.toml", "README.md", "bpf", "xdplbd", "systemd", "man",
                "etc", "completion", "scripts")
# CAP_BPF 39, CAP_PERFMON 38, CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_NET_RAW 13
# (docs/systemd.md)
UNIT_CAPS = (1 << 39) | (1 << 38) | (1 << 12) | (1 << 21) | (1 << 13)
#: every installed path with its type, mode, size, mtime and link target
LIST_TREE = ["find", "/etc/xdplb", "/opt/xdplb", "/usr/local", "-printf", "%p %y %m %s %T@ %l\n"]
SMALL_TUNABLES = {"max_vips": 16, "max_reals": 256, "conntrack_size": 65536,
                  "ring_size": 65537, "udp_timeout": 30}


# --------------------------------------------------------------------------- helpers


def config(reals: Sequence[tuple[str, int]], *, extra_vips: Sequence[dict[str, Any]] = (),
           **top: Any) -> str:
    """A valid config for xlb0: VIP 10.0.0.100:80/tcp with `reals` as (ip, weight)."""
    doc: dict[str, Any] = {
        "interface": LB_IF,
        "xdp_mode": "native",
        "tunables": SMALL_TUNABLES,
        "vips": [{"vip": VIP, "port": 80, "protocol": "tcp",
                  "reals": [{"ip": ip, "mac": MACS[ip], "weight": w} for ip, w in reals]},
                 *extra_vips],
        **top,
    }
    return "// written by tests/systemd/test_unit.py\n" + json.dumps(doc, indent=2) + "\n"


def write_config(c: Container, text: str, path: str = CONF) -> None:
    """Replace the config in place (as `cat > file` would), keeping 0644 root."""
    c.run(["sh", "-ec", 'cat > "$1"', "sh", path], input=text)


def state(c: Container) -> dict[str, Any]:
    r = c.run(["python3", "-c", "import json, sys, tomllib; "
               "print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))", STATE], check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def live_reals(c: Container) -> dict[str, dict[str, int]]:
    """{vip:port/proto: {real ip: weight}} as `xdplb status --json` reads it."""
    out = json.loads(c.run(["xdplb", "status", "--json"], check=False).stdout)
    return {f"{v['vip']}:{v['port']}/{v['protocol']}": {r["ip"]: r["weight"] for r in v["reals"]}
            for v in out["vips"]}


def tx_packets(c: Container) -> int:
    stats = json.loads(c.run(["xdplb", "stats", "--json"]).stdout)
    return int(stats["outcomes"]["tx"]["packets"])


def attached_prog(c: Container, ifname: str = LB_IF) -> tuple[int, str]:
    """(program id, name) of the XDP program on `ifname`, (0, "") if none."""
    link = json.loads(c.run(["ip", "-d", "-j", "link", "show", ifname]).stdout)[0]
    xdp = link.get("xdp") or {}
    prog = xdp.get("prog") or {}
    return int(prog.get("id", 0)), str(prog.get("name", ""))


def cursor(c: Container) -> str:
    c.run(["journalctl", "--sync"], check=False)
    out = c.run(["journalctl", "-n", "0", "--show-cursor"], check=False).stdout
    m = re.search(r"^-- cursor: (.+)$", out, re.M)
    assert m, out
    return m.group(1)


def journal_since(c: Container, cur: str, *extra: str) -> list[str]:
    """Lines of `journalctl -u xdplb` after the cursor (message text only)."""
    c.run(["journalctl", "--sync"], check=False)
    out = c.run(["journalctl", "--no-pager", "-u", UNIT, "-o", "cat", f"--after-cursor={cur}",
                 *extra]).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def wait_reloads(c: Container, before: int, timeout: float = 15) -> dict[str, Any]:
    """Wait until state.toml counts a reload after `before`; return the state."""
    return wait_until(lambda: (s := state(c)) and int(s.get("reloads", 0)) > before and s,
                      timeout, f"a reload after #{before}")


def main_pid(c: Container) -> int:
    return int(c.show(UNIT, "MainPID"))


def copy_tree(dest: Path) -> None:
    for name in INSTALL_TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info", "build"))
        else:
            shutil.copy2(src, dest / name)


# The sender: VIP frames from xlb1 into xlb0, paced (~10 kpps, far below what
# veth + XDP take, so the only way to lose one is a gap in the data plane),
# until STOP exists; then it counts the rewritten frames that came back.
SENDER = r"""
import os, socket, struct, sys, time
ifname, lb_mac, vip, stop, ready = sys.argv[1:6]
reals = {bytes.fromhex(m.replace(":", "")) for m in sys.argv[6].split(",")}
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind((ifname, 0))
src_mac = s.getsockname()[4]
dst_mac = bytes.fromhex(lb_mac.replace(":", ""))
vip_b = socket.inet_aton(vip)

def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

def frame(i):
    sport = 1024 + i % 60000
    tcp = struct.pack("!HHIIBBHHH", sport, 80, i, 0, 5 << 4, 0x10, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0,
                     socket.inet_aton("10.0.0.1"), socket.inet_aton(vip))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp

got = 0
def drain():
    global got
    while True:
        try:
            data, addr = s.recvfrom(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if addr[2] != PACKET_OUTGOING and data[:6] in reals and data[30:34] == vip_b:
            got += 1

sent = 0
open(ready, "w").close()
while not os.path.exists(stop):
    for _ in range(50):
        s.send(frame(sent))
        sent += 1
    drain()
    time.sleep(0.005)
deadline = time.monotonic() + 3
while got < sent and time.monotonic() < deadline:
    drain()
    time.sleep(0.01)
print(sent, got)
"""


class Stream:
    """Runs SENDER in the container in a thread; `stop()` returns (sent, received)."""

    def __init__(self, c: Container, lb_mac: str, reals: Sequence[str]) -> None:
        self.c = c
        self.stop_file = f"/run/xdplb-test-stop-{os.getpid()}"
        ready = f"/run/xdplb-test-ready-{os.getpid()}"
        c.run(["rm", "-f", self.stop_file, ready])
        c.write_text("/root/sender.py", SENDER)
        self.result: subprocess.CompletedProcess[str] | None = None
        self.error: BaseException | None = None
        argv = ["python3", "/root/sender.py", WIRE_IF, lb_mac, VIP, self.stop_file, ready,
                ",".join(MACS[ip] for ip in reals)]

        def run() -> None:
            try:
                self.result = c.run(argv, timeout=120)
            except BaseException as e:  # reported by stop()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_until(lambda: c.run(["test", "-e", ready], check=False).returncode == 0, 20,
                   "the sender to start")
        c.run(["rm", "-f", ready])

    def stop(self) -> tuple[int, int]:
        self.c.run(["touch", self.stop_file])
        self.thread.join(timeout=60)
        self.c.run(["rm", "-f", self.stop_file])
        if self.error is not None:
            raise self.error
        assert self.result is not None
        sent, got = map(int, self.result.stdout.split())
        return sent, got


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lb(systemd_rootfs: Path) -> Iterator[Container]:
    """A container with the veth pair, where the tests below install and run xdplb."""
    with Container(systemd_rootfs) as c:
        c.sh(f"""
            ip link add {LB_IF} type veth peer name {WIRE_IF}
            # frames the sender builds carry their own checksums
            ethtool -K {WIRE_IF} tx off >/dev/null
            ip link set {LB_IF} up
            ip link set {WIRE_IF} up
        """)
        yield c


def _require(lb: Container, what: str) -> None:
    """Skip (not fail) a later step when the install it builds on did not happen."""
    if lb.run(["test", "-x", "/usr/local/sbin/xdplbd"], check=False).returncode != 0:
        pytest.skip(f"{what}: xdplb is not installed (see test_make_install)")


# --------------------------------------------------------------------------- install


def test_make_install(lb: Container) -> None:
    c = lb
    with tempfile.TemporaryDirectory() as tmp:
        copy_tree(Path(tmp))
        c.copy_in(tmp, SRC)
    t0 = time.monotonic()
    # No network in the container: the distro packages it needs are in the image,
    # and pip must not look at an index.
    r = c.run(["make", "-C", SRC, "install", "PIP_ARGS=--no-index"], timeout=300)
    first = time.monotonic() - t0
    assert "installed an example /etc/xdplb/lb_conf.json" in r.stderr, r.stderr

    files = {
        "/usr/local/sbin/xdplbd": "-> /opt/xdplb/bin/xdplbd",
        "/usr/local/bin/xdplb": "-> /opt/xdplb/bin/xdplb",
        "/usr/local/share/xdplb/bpf/xdplb.c": "644 root",
        "/usr/local/lib/systemd/system/xdplb.service": "644 root",
        "/usr/local/share/man/man8/xdplbd.8": "644 root",
        "/usr/local/share/man/man8/xdplb.8": "644 root",
        "/usr/local/share/man/man5/lb_conf.json.5": "644 root",
        "/usr/local/share/bash-completion/completions/xdplb": "644 root",
        "/etc/xdplb": "755 root",
        CONF: "644 root",
    }
    for path, want in files.items():
        if want.startswith("->"):
            assert c.run(["readlink", path]).stdout.strip() == want[3:], path
        else:
            assert c.run(["stat", "-c", "%a %U", path]).stdout.strip() == want, path
    # the shipped example is valid as it is, and the tools run from the venv
    assert "OK (0 VIPs, 0 reals)" in c.run(["xdplb", "check"]).stdout
    assert c.run(["xdplbd", "--version"]).stdout.startswith("xdplbd ")
    assert c.run(["/opt/xdplb/bin/python", "-c", "import bcc, xdplbd"]).returncode == 0
    assert c.run(["man", "-w", "xdplbd", "xdplb", "lb_conf.json"]).stdout.count("/man/") == 3
    assert c.show(UNIT, "FragmentPath") == "/usr/local/lib/systemd/system/xdplb.service"
    assert c.show(UNIT, "LoadState") == "loaded"  # make install ran daemon-reload

    # Idempotent: a second run keeps the operator's config and changes nothing else.
    write_config(c, config([("10.0.0.11", 1), ("10.0.0.12", 1)]))
    before = c.run(LIST_TREE).stdout
    t0 = time.monotonic()
    r = c.run(["make", "-C", SRC, "install", "PIP_ARGS=--no-index"], timeout=300)
    second = time.monotonic() - t0
    assert "keeping existing /etc/xdplb/lb_conf.json" in r.stderr, r.stderr
    after = c.run(LIST_TREE).stdout
    changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
    assert not changed, "\n".join(changed)
    assert '"10.0.0.12"' in c.read_text(CONF)
    print(f"\nmake install: {first:.1f}s, again (no-op): {second:.1f}s")


def test_unit_verifies(lb: Container) -> None:
    _require(lb, "systemd-analyze verify")
    r = lb.run(["systemd-analyze", "verify", UNIT], check=False)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_config_ownership_and_mode_are_checked(lb: Container) -> None:
    """A world-writable config, or one not owned by root, is refused with the fix to run."""
    _require(lb, "config ownership")
    c = lb
    for breakage, reason in (
        (["chmod", "0666", CONF], f"is world-writable; run: chmod o-w {CONF}"),
        (["chown", "65534", CONF], f"is owned by uid 65534, not root; run: chown root {CONF}"),
    ):
        c.run(breakage)
        try:
            r = c.run(["xdplb", "check"], check=False)
            assert r.returncode == 1 and reason in r.stderr, r
            cur = cursor(c)
            assert c.systemctl("start", UNIT, check=False).returncode != 0
            assert c.show(UNIT, "ActiveState") == "failed"
            assert c.show(UNIT, "ExecMainStatus") == "1"
            if breakage[0] == "chmod":
                # exit 1 (invalid config) is not retried: RestartPreventExitStatus=1
                time.sleep(2.5)  # RestartSec=2s
                assert c.show(UNIT, "NRestarts") == "0"
                assert c.show(UNIT, "ActiveState") == "failed"
            log = journal_since(c, cur)
            assert any(reason in ln for ln in log), log
            # nothing reached the kernel
            assert attached_prog(c) == (0, "")
        finally:
            c.run(["chmod", "0644", CONF])
            c.run(["chown", "root:root", CONF])
            c.systemctl("reset-failed", UNIT, check=False)


def test_check_config_file_refuses_unsafe_files(tmp_path: Path) -> None:
    """daemon.read_config refuses a world-writable file, or one not owned by root."""
    from xdplbd.core.config import ConfigError
    from xdplbd.service.daemon import read_config

    path = tmp_path / "lb_conf.json"
    path.write_text(config([("10.0.0.11", 1)]))
    os.chown(path, 0, 0)
    path.chmod(0o644)
    assert read_config(str(path))[0].interface == LB_IF
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=re.escape(f"is world-writable; run: chmod o-w {path}")):
        read_config(str(path))
    path.chmod(0o664)  # group-writable is the owner's business
    read_config(str(path))
    path.chmod(0o644)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=re.escape(
            f"is owned by uid 65534, not root; run: chown root {path}")):
        read_config(str(path))


# --------------------------------------------------------------------------- running


def test_enable_now_attaches(lb: Container) -> None:
    _require(lb, "start")
    c = lb
    # The wire side needs an XDP program for XDP_TX frames from xlb0 to reach it.
    c.run(["/opt/xdplb/bin/python", "-c", "import socket, sys; "
           "from xdplbd.lab.topology import attach_stub; "
           "attach_stub(socket.if_nametoindex(sys.argv[1]))", WIRE_IF])
    write_config(c, config([("10.0.0.11", 1), ("10.0.0.12", 1)],
                           metrics={"listen": "127.0.0.1:9110"}))
    t0 = time.monotonic()
    c.systemctl("enable", "--now", UNIT)
    started = time.monotonic() - t0
    assert c.show(UNIT, "ActiveState") == "active"
    assert c.show(UNIT, "SubState") == "running"
    assert c.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    assert c.show(UNIT, "StatusText") == "generation 1: 1 VIPs, 2 reals on xlb0"

    prog_id, name = attached_prog(c)
    assert prog_id and name == "xdplb_main"
    st = state(c)
    assert st["pid"] == main_pid(c) and st["prog_id"] == prog_id
    assert st["interface"] == LB_IF and st["xdp_mode"] == "native"
    assert live_reals(c) == {f"{VIP}:80/tcp": {"10.0.0.11": 1, "10.0.0.12": 1}}

    # Restrictive modes: pins private to root, state readable, nothing writable by others.
    modes = c.run(["sh", "-c", f"stat -c '%a %U %n' /run/xdplb {STATE} {PINS} {PINS}/*"]).stdout
    lines = [ln.split(" ", 2) for ln in modes.splitlines()]
    assert lines[0][:2] == ["755", "root"] and lines[1][:2] == ["644", "root"], modes
    assert lines[2][:2] == ["700", "root"], modes
    assert {m for m, _, _ in lines[3:]} == {"600"} and len(lines) > 8, modes

    # It runs with exactly the unit's capabilities, and sandboxed.
    status = c.read_text(f"/proc/{main_pid(c)}/status")
    caps = {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}
    assert caps["CapEff"] == caps["CapBnd"] == UNIT_CAPS, caps
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)
    # the Prometheus exporter works inside the sandbox (RestrictAddressFamilies=)
    metrics = wait_until(lambda: c.run(
        ["python3", "-c", "import urllib.request; print(urllib.request.urlopen("
         "'http://127.0.0.1:9110/metrics', timeout=5).read().decode())"], check=False).stdout,
        10, "/metrics")
    assert re.search(r"^xdplb_\w+", metrics, re.M), metrics[:2000]
    print(f"\nsystemctl enable --now (compile + attach) took {started:.2f}s")


def test_edit_is_applied_without_a_command(lb: Container) -> None:
    _require(lb, "edit")
    c = lb
    before = int(state(c)["reloads"])
    gen = int(state(c)["generation"])
    cur = cursor(c)
    write_config(c, config([("10.0.0.11", 1), ("10.0.0.13", 1)]))
    st = wait_reloads(c, before)
    assert st["last_reload"]["trigger"] == "file change"
    assert st["last_reload"]["result"] == "ok"
    assert st["generation"] == gen + 1
    assert live_reals(c) == {f"{VIP}:80/tcp": {"10.0.0.11": 1, "10.0.0.13": 1}}
    # one line per change, at info priority
    log = journal_since(c, cur, "-p", "info")
    assert log.count(f"vip {VIP}:80/tcp: +real 10.0.0.13") == 1, log
    assert log.count(f"vip {VIP}:80/tcp: -real 10.0.0.12") == 1, log
    assert c.show(UNIT, "ActiveState") == "active"


def test_systemctl_reload_applies_and_goes_through_reloading(lb: Container) -> None:
    """`systemctl reload` goes through RELOADING=1/READY=1, and a config that is a symlink
    into another directory is followed (issue 14: deploys by symlink swap).

    The config becomes a symlink into another directory and the change is made there:
    the watch follows the link, so the write alone makes exactly one reload; then
    `systemctl reload` makes one more, through the unit's reload states.
    """
    _require(lb, "reload")
    c = lb
    c.sh(f"mkdir -p /etc/xdplb/managed && cp -a {CONF} /etc/xdplb/managed/lb.json")
    pid = main_pid(c)
    swap = int(state(c)["reloads"])
    c.run(["ln", "-sfn", "managed/lb.json", CONF])
    try:
        # the symlink swap itself is a file event: let that reload finish first
        wait_reloads(c, swap)
        time.sleep(0.5)
        before = int(state(c)["reloads"])
        write_config(c, config([("10.0.0.11", 1), ("10.0.0.13", 0)]), "/etc/xdplb/managed/lb.json")
        wait_reloads(c, before)
        time.sleep(0.5)  # more than the watch debounce: exactly one reload for the write
        assert int(state(c)["reloads"]) == before + 1
        assert live_reals(c) == {f"{VIP}:80/tcp": {"10.0.0.11": 1, "10.0.0.13": 0}}
        c.run(["systemd-analyze", "log-level", "debug"])
        cur = cursor(c)
        try:
            t0 = time.monotonic()
            c.systemctl("reload", UNIT)  # ExecReload= waits: done when it returns
            took = time.monotonic() - t0
        finally:
            c.run(["systemd-analyze", "log-level", "info"])
        st = state(c)
        assert st["reloads"] == before + 2
        assert st["last_reload"]["trigger"] == "SIGHUP" and st["last_reload"]["result"] == "ok"
        assert live_reals(c) == {f"{VIP}:80/tcp": {"10.0.0.11": 1, "10.0.0.13": 0}}
        assert main_pid(c) == pid and c.show(UNIT, "ActiveState") == "active"

        log = journal_since(c, cur)
        def at(pattern: str) -> int:
            hits = [i for i, ln in enumerate(log) if re.search(pattern, ln)]
            assert hits, f"{pattern!r} not in the journal:\n" + "\n".join(log)
            return hits[0]
        # the unit went running -> reload -> running, and the daemon said so itself
        assert at(r"Changed running -> reload") < at(r"Changed reload -> running")
        notify = rf"Got notification message from PID {pid} \(RELOADING=1, MONOTONIC_USEC=\d+\)"
        assert at(notify) < at(rf"Got notification message from PID {pid} \(READY=1, STATUS=")
        assert at(r"reload \(SIGHUP\)") < at(r"Reloaded xdplb")
        print(f"\nsystemctl reload took {took:.2f}s")
    finally:
        restore = int(state(c)["reloads"])
        c.sh(f"cp --remove-destination /etc/xdplb/managed/lb.json {CONF} && "
             "rm -rf /etc/xdplb/managed")
        wait_reloads(c, restore)
        time.sleep(0.5)


def test_invalid_config_keeps_the_old_one_live(lb: Container) -> None:
    _require(lb, "invalid config")
    c = lb
    good = state(c)
    live = live_reals(c)
    pid = main_pid(c)
    prog = attached_prog(c)
    cur = cursor(c)
    bad = config([("10.0.0.11", 1)]).replace(MACS["10.0.0.11"], "02:00:00:00:00:zz")
    bad = bad.replace('"xdp_mode"', '"xdp_mod"')
    write_config(c, bad)
    st = wait_reloads(c, int(good["reloads"]))
    assert st["last_reload"]["result"] == "rejected"
    assert st["generation"] == good["generation"]
    assert live_reals(c) == live and attached_prog(c) == prog
    assert c.show(UNIT, "ActiveState") == "active" and main_pid(c) == pid
    assert c.show(UNIT, "StatusText").startswith(
        f"config rejected, generation {good['generation']} still live")

    # `systemctl reload` reports the rejection; the unit stays active
    r = c.systemctl("reload", UNIT, check=False)
    assert r.returncode != 0
    assert c.show(UNIT, "ActiveState") == "active" and main_pid(c) == pid
    assert live_reals(c) == live

    # the reasons are in the journal, at error priority, naming the fields
    errors = journal_since(c, cur, "-p", "err")
    mac_reason = f'{CONF}: vips[0].reals[0].mac: "02:00:00:00:00:zz" is not a MAC address'
    key_reason = f'{CONF}: xdp_mod: unknown key "xdp_mod"'
    assert sum(mac_reason in ln for ln in errors) == 2, errors  # file change + reload
    assert sum(key_reason in ln for ln in errors) == 2, errors
    assert not any("+real" in ln or "-real" in ln for ln in errors)

    write_config(c, config([("10.0.0.11", 1), ("10.0.0.13", 0)]))
    wait_until(lambda: state(c)["last_reload"]["result"] == "ok", 10, "the fixed config")
    assert c.show(UNIT, "StatusText").startswith("generation ")


def test_journal_has_one_info_line_per_change(lb: Container) -> None:
    _require(lb, "journal")
    c = lb
    before = int(state(c)["reloads"])
    cur = cursor(c)
    extra = {"vip": VIP, "port": 53, "protocol": "udp",
             "reals": [{"ip": "10.0.0.21", "mac": MACS["10.0.0.21"]},
                       {"ip": "10.0.0.22", "mac": MACS["10.0.0.22"]}]}
    # five changes: +real .12, weight of .13, -real .11, and a new VIP with 2 reals
    write_config(c, config([("10.0.0.12", 1), ("10.0.0.13", 2)], extra_vips=[extra]))
    st = wait_reloads(c, before)
    assert st["last_reload"]["result"] == "ok", st
    info = journal_since(c, cur, "-p", "info")
    changes = [ln for ln in info if ln.startswith("vip ")]
    tcp, udp = f"vip {VIP}:80/tcp: ", f"vip {VIP}:53/udp: "
    assert sorted(changes) == sorted([
        tcp + "+real 10.0.0.12", tcp + "real 10.0.0.13 weight 0 -> 2", tcp + "-real 10.0.0.11",
        udp + "+real 10.0.0.21", udp + "+real 10.0.0.22", udp + "+vip",
    ]), info
    summary = [ln for ln in info if ln.startswith("reload (file change): applied")]
    assert len(summary) == 1, info


def test_watchdog_and_restart_on_failure(lb: Container) -> None:
    """WATCHDOG=1 arrives; a killed daemon is restarted and forwarding never stopped."""
    _require(lb, "watchdog")
    c = lb
    assert c.show(UNIT, "WatchdogUSec") == "30s"
    # pings come every WatchdogSec/2: shorten it so the test need not wait 15 s
    dropin = "/run/systemd/system/xdplb.service.d/watchdog-test.conf"
    c.write_text(dropin, "[Service]\nWatchdogSec=2s\n")
    try:
        c.systemctl("daemon-reload")
        c.systemctl("restart", UNIT)
        first = int(c.show(UNIT, "WatchdogTimestampMonotonic"))
        wait_until(lambda: int(c.show(UNIT, "WatchdogTimestampMonotonic")) > first, 3,
                   "a WATCHDOG=1 ping", interval=0.1)
        pid, prog = main_pid(c), attached_prog(c)
        restarts = int(c.show(UNIT, "NRestarts"))
        c.run(["kill", "-9", str(pid)])
        wait_until(lambda: c.show(UNIT, "ActiveState") == "active"
                   and main_pid(c) not in (0, pid), 15, "Restart=on-failure to start a new daemon")
        assert int(c.show(UNIT, "NRestarts")) == restarts + 1
        assert attached_prog(c) == prog  # the same program stayed attached throughout
        assert state(c)["pid"] == main_pid(c)
    finally:
        c.run(["rm", "-rf", os.path.dirname(dropin)])
        c.systemctl("daemon-reload")
        c.systemctl("restart", UNIT)
    assert c.show(UNIT, "WatchdogUSec") == "30s"


def test_restart_under_a_packet_stream_loses_nothing(lb: Container) -> None:
    _require(lb, "restart")
    c = lb
    reals = list(live_reals(c)[f"{VIP}:80/tcp"])
    lb_mac = state(c)["lb_mac"]
    prog, pid = attached_prog(c), main_pid(c)
    tx0 = tx_packets(c)
    stream = Stream(c, lb_mac, reals)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        c.systemctl("restart", UNIT)
        restart = time.monotonic() - t0
        assert c.show(UNIT, "ActiveState") == "active" and main_pid(c) != pid
        time.sleep(0.5)
    finally:
        sent, got = stream.stop()
    tx = tx_packets(c) - tx0
    link = c.run(["ip", "-s", "link", "show", LB_IF]).stdout
    assert sent > 5000
    assert tx == sent, f"sent {sent}, XDP_TX {tx}\n{link}"
    assert got == sent, f"sent {sent}, came back rewritten {got}\n{link}"
    assert attached_prog(c) == prog
    print(f"\nrestart took {restart:.2f}s under {sent} frames: {tx} XDP_TX, {got} received")


def test_stop_leaves_the_data_plane_forwarding(lb: Container) -> None:
    _require(lb, "stop")
    c = lb
    reals = list(live_reals(c)[f"{VIP}:80/tcp"])
    lb_mac = state(c)["lb_mac"]
    prog = attached_prog(c)
    cur = cursor(c)
    c.systemctl("stop", UNIT)
    assert c.show(UNIT, "ActiveState") == "inactive"  # a clean stop, not "failed"
    assert c.show(UNIT, "ExecMainStatus") == "0"
    log = journal_since(c, cur, "-p", "info")
    assert any("the data plane stays attached and keeps forwarding" in ln for ln in log), log

    # documented: program attached, maps pinned, state kept, forwarding continues
    assert attached_prog(c) == prog
    assert c.run(["test", "-e", f"{PINS}/vips"]).returncode == 0
    assert c.run(["test", "-e", STATE]).returncode == 0
    status = json.loads(c.run(["xdplb", "status", "--json"], check=False).stdout)
    assert status["daemon"]["running"] is False and status["dataplane"]["attached"] is True
    tx0 = tx_packets(c)
    stream = Stream(c, lb_mac, reals)
    time.sleep(0.3)
    sent, got = stream.stop()
    assert tx_packets(c) - tx0 == sent == got

    # `xdplb detach` is the explicit teardown
    c.run(["xdplb", "detach"])
    assert attached_prog(c) == (0, "")
    assert c.run(["test", "-e", PINS], check=False).returncode != 0

    # and a start builds it all again
    c.systemctl("start", UNIT)
    assert attached_prog(c)[1] == "xdplb_main"
    c.systemctl("stop", UNIT)


def test_make_uninstall(lb: Container) -> None:
    _require(lb, "uninstall")
    c = lb
    r = c.run(["make", "-C", SRC, "uninstall"], timeout=120)
    assert "kept /etc/xdplb/lb_conf.json" in r.stderr
    assert "data plane is still attached" in r.stderr  # the previous test restarted it
    for path in ("/usr/local/sbin/xdplbd", "/usr/local/bin/xdplb", "/opt/xdplb",
                 "/usr/local/share/xdplb", "/usr/local/lib/systemd/system/xdplb.service",
                 "/usr/local/share/man/man8/xdplbd.8", "/usr/local/share/man/man5/lb_conf.json.5",
                 "/usr/local/share/bash-completion/completions/xdplb", "/run/xdplb"):
        assert c.run(["test", "-e", path], check=False).returncode != 0, path
    assert c.run(["test", "-f", CONF]).returncode == 0
    assert c.show(UNIT, "LoadState") == "not-found"
    assert c.run(["systemctl", "is-enabled", UNIT], check=False).returncode != 0
    # idempotent
    c.run(["make", "-C", SRC, "uninstall"], timeout=120)


# --------------------------------------------------------------------------- staged install


def test_make_install_destdir_and_prefix(tmp_path: Path) -> None:
    """`make install DESTDIR=... PREFIX=/usr` stages the same layout, paths rewritten."""
    dest = tmp_path / "stage"
    env = {**os.environ, "XDPLB_INSTALL_DEPS": "0"}
    args = ["make", "-s", "-C", str(ROOT), f"DESTDIR={dest}", "PREFIX=/usr"]
    subprocess.run([*args, "install", "PIP_ARGS=--no-index --no-deps"], env=env, check=True,
                   capture_output=True, text=True, timeout=300)
    unit = (dest / "usr/lib/systemd/system/xdplb.service").read_text()
    assert "ExecStart=/usr/sbin/xdplbd " in unit and "ExecReload=/usr/bin/xdplb " in unit
    assert "XDPLB_BPF_SOURCE=/usr/share/xdplb/bpf/xdplb.c" in unit
    assert not [ln for ln in unit.splitlines() if "/usr/local" in ln and not ln.startswith("#")]
    assert os.readlink(dest / "usr/sbin/xdplbd") == "/opt/xdplb/bin/xdplbd"
    assert os.readlink(dest / "usr/bin/xdplb") == "/opt/xdplb/bin/xdplb"
    # the staged venv names its final place, not the staging directory
    assert (dest / "opt/xdplb/bin/xdplbd").read_text().startswith("#!/opt/xdplb/bin/python")
    staged = [p for p in (dest / "opt/xdplb/bin").iterdir()
              if p.is_file() and str(dest) in p.read_text(errors="replace")]
    assert not staged, staged
    for f in ("usr/share/xdplb/bpf/xdplb.c", "usr/share/man/man8/xdplbd.8",
              "usr/share/man/man8/xdplb.8", "usr/share/man/man5/lb_conf.json.5",
              "usr/share/bash-completion/completions/xdplb", "etc/xdplb/lb_conf.json",
              "etc/xdplb/bird.conf.example", "etc/xdplb/keepalived.conf.example"):
        assert (dest / f).is_file(), f
    assert (dest / "etc/xdplb/lb_conf.json").stat().st_mode & 0o777 == 0o644
    # the checkout stays clean (the build ran on a copy)
    assert not (ROOT / "build").exists()

    subprocess.run([*args, "uninstall"], env=env, check=True, capture_output=True, text=True)
    left = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert left == ["etc/xdplb/lb_conf.json"]
