"""Smoke tests of the systemd container harness: boot, commands, BPF/XDP, Type=notify."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from .container import (
    Container,
    ContainerCommandError,
    ContainerError,
    _mounts_under,
    _pid_alive,
)

# --------------------------------------------------------------------------- helpers


def _procs_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def assert_cleaned_up(c: Container) -> None:
    assert c.proc is None or c.proc.poll() is not None, "systemd-nspawn still running"
    assert c.pid1 is None or not _pid_alive(c.pid1), "container PID 1 still alive"
    assert not _procs_mentioning(f"--machine={c.name} "), _procs_mentioning(c.name)
    if c.tmpdir is not None:
        assert not _mounts_under(c.tmpdir), _mounts_under(c.tmpdir)
        assert not c.tmpdir.exists(), f"{c.tmpdir} left behind"


# --------------------------------------------------------------------------- boot


def test_boots_to_running(systemd_container: Container) -> None:
    c = systemd_container
    failed = c.systemctl("--failed", "--plain", "--no-legend", check=False).stdout
    assert c.system_state == "running", f"state {c.system_state}; failed units:\n{failed}"
    assert c.run(["systemd-detect-virt"], check=False).stdout.strip() == "systemd-nspawn"
    assert c.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert c.run(["systemctl", "--version"]).stdout.startswith("systemd ")
    assert c.boot_seconds is not None and c.boot_seconds < 30
    print(f"\ncontainer booted in {c.boot_seconds:.2f}s")


def test_run_semantics(systemd_container: Container) -> None:
    c = systemd_container
    r = c.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")

    with pytest.raises(ContainerCommandError) as exc:
        c.run(["sh", "-c", "echo the-reason >&2; exit 4"])
    assert exc.value.returncode == 4
    assert "the-reason" in str(exc.value)

    assert c.run(["tr", "a-z", "A-Z"], input="hello\n").stdout == "HELLO\n"

    env = dict(line.split("=", 1) for line in c.run(["env"]).stdout.splitlines())
    assert "VIRTUAL_ENV" not in env and "PYTEST_CURRENT_TEST" not in env
    assert env["PATH"].endswith("/bin")
    assert c.run(["env"], env={"FOO": "bar"}).stdout.count("FOO=bar") == 1

    # a timeout kills the command inside the container, not just nsenter
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        c.run(["sh", "-c", "exec sleep 4242"], timeout=1)
    assert time.monotonic() - t0 < 5
    assert c.run(["pgrep", "-f", "sleep 4242"], check=False).returncode == 1

    # a private network namespace: only lo at boot
    links = c.run(["ip", "-o", "link", "show"]).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]


def test_copy_in_and_write_text(systemd_container: Container, tmp_path: Path) -> None:
    c = systemd_container
    f = tmp_path / "file.txt"
    f.write_text("one\n")
    f.chmod(0o640)
    c.copy_in(f, "/opt/smoke/deep/file.txt")
    assert c.read_text("/opt/smoke/deep/file.txt") == "one\n"
    assert c.run(["stat", "-c", "%a", "/opt/smoke/deep/file.txt"]).stdout.strip() == "640"

    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x\n")
    (d / "top").write_text("top\n")
    c.copy_in(d, "/opt/smoke/tree")
    assert c.read_text("/opt/smoke/tree/sub/x") == "x\n"
    assert c.read_text("/opt/smoke/tree/top") == "top\n"

    c.write_text("/etc/smoke.conf", "a = 1\n", mode=0o600)
    assert c.read_text("/etc/smoke.conf") == "a = 1\n"
    assert c.run(["stat", "-c", "%a", "/etc/smoke.conf"]).stdout.strip() == "600"
    assert c.share_dir is not None and not any(c.share_dir.iterdir()), "staging left behind"
    c.run(["rm", "-rf", "/opt/smoke", "/etc/smoke.conf"])


def test_bpffs_is_a_private_instance(systemd_container: Container) -> None:
    c = systemd_container
    assert c.bpffs_dir is not None
    assert c.run(["stat", "-f", "-c", "%T", "/sys/fs/bpf"]).stdout.strip() == "bpf_fs"
    c.run(["mkdir", "/sys/fs/bpf/xdplb-smoke-dir"])
    try:
        assert (c.bpffs_dir / "xdplb-smoke-dir").is_dir()
        assert not Path("/sys/fs/bpf/xdplb-smoke-dir").exists()
    finally:
        c.run(["rmdir", "/sys/fs/bpf/xdplb-smoke-dir"])


# --------------------------------------------------------------------------- BPF / XDP

XDP_SCRIPT = r"""
import ctypes, os, sys
from bcc import BPF, libbcc

src = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"
b = BPF(text=src)
fn = b.load_func("xdp_pass", BPF.XDP)
BPF.attach_xdp(sys.argv[1], fn, 0)
os.makedirs("/sys/fs/bpf/xdplb-smoke", exist_ok=True)
if libbcc.lib.bpf_obj_pin(fn.fd, b"/sys/fs/bpf/xdplb-smoke/xdp_pass") != 0:
    sys.exit("pin failed: errno %d" % ctypes.get_errno())
print("attached", fn.fd)
"""


def test_xdp_program_loads_and_attaches(systemd_container: Container) -> None:
    c = systemd_container
    if c.env.get("BCC_KERNEL_SOURCE"):
        # the merged header tree and the /usr/src trees it links to are bound read-only
        c.run(["test", "-r", f"{c.env['BCC_KERNEL_SOURCE']}/include/linux/kconfig.h"])
    c.sh("ip link add xs0 type veth peer name xs1; ip link set xs0 up; ip link set xs1 up")
    try:
        c.write_text("/root/xdp_smoke.py", XDP_SCRIPT)
        r = c.run(["python3", "/root/xdp_smoke.py", "xs0"], timeout=120)
        assert r.stdout.startswith("attached"), r
        # a netlink-attached program outlives the process that attached it
        link = c.run(["ip", "-d", "link", "show", "xs0"]).stdout
        assert "prog/xdp" in link and "name xdp_pass" in link, link
        assert " xdp " in link.splitlines()[0] + " ", link
        # pinned through the container's /sys/fs/bpf: seen on the host's bpffs instance
        assert c.bpffs_dir is not None
        assert (c.bpffs_dir / "xdplb-smoke" / "xdp_pass").exists()
        # the interface lives in the container's netns only
        host = subprocess.run(["ip", "link", "show", "xs0"], capture_output=True, check=False)
        assert host.returncode != 0
    finally:
        c.run(["ip", "link", "del", "xs0"], check=False)
        c.run(["rm", "-rf", "/sys/fs/bpf/xdplb-smoke", "/root/xdp_smoke.py"], check=False)


# --------------------------------------------------------------------------- Type=notify

NOTIFY_SCRIPT = r"""
import os, signal, socket, sys, time

def notify(msg):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
if sys.argv[1] == "fail":
    print("failing before READY", flush=True)
    sys.exit(7)
time.sleep(float(sys.argv[1]))
notify("READY=1\nSTATUS=reloads=0")
print("ready", flush=True)
reloads = 0
while True:
    sig = signal.sigwait({signal.SIGHUP, signal.SIGTERM})
    if sig == signal.SIGHUP:
        reloads += 1
        notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        print("got SIGHUP, reloading", flush=True)
        time.sleep(0.3)
        notify("READY=1\nSTATUS=reloads=%d" % reloads)
        print("reload %d done" % reloads, flush=True)
    else:
        notify("STOPPING=1")
        print("stopping", flush=True)
        break
"""

NOTIFY_UNIT = """\
[Unit]
Description=xdplb harness Type=notify smoke test

[Service]
Type=notify
ExecStart=/usr/bin/python3 -u /usr/local/bin/notify-smoke.py {arg}
ExecReload=/bin/kill -HUP $MAINPID
TimeoutStartSec=20
"""


def test_type_notify_unit(systemd_container: Container) -> None:
    c = systemd_container
    unit = "notify-smoke.service"
    bad = "notify-smoke-fail.service"
    c.write_text("/usr/local/bin/notify-smoke.py", NOTIFY_SCRIPT, mode=0o755)
    c.write_text(f"/run/systemd/system/{unit}", NOTIFY_UNIT.format(arg="0.6"))
    c.write_text(f"/run/systemd/system/{bad}", NOTIFY_UNIT.format(arg="fail"))
    c.systemctl("daemon-reload")
    try:
        t0 = time.monotonic()
        c.systemctl("start", unit)
        # Type=notify: start blocks until READY=1 (sent 0.6 s after exec)
        assert time.monotonic() - t0 >= 0.6
        assert c.show(unit, "Type") == "notify"
        assert c.show(unit, "ActiveState") == "active"
        assert c.show(unit, "SubState") == "running"
        assert c.show(unit, "StatusText") == "reloads=0"
        main_pid = c.show(unit, "MainPID")

        c.systemctl("reload", unit)
        # systemd 252 (no Type=notify-reload): reload returns once ExecReload= exits,
        # before the daemon's READY=1; wait on STATUS= instead.
        c.wait_until(lambda: c.show(unit, "StatusText") == "reloads=1", 10, "reload 1")
        c.wait_until(lambda: c.show(unit, "SubState") == "running", 10, "running after reload")
        assert c.show(unit, "MainPID") == main_pid

        c.systemctl("stop", unit)
        assert c.show(unit, "ActiveState") == "inactive"
        log = c.journal(unit)
        for line in ("ready", "got SIGHUP, reloading", "reload 1 done", "stopping"):
            assert line in log.splitlines(), log
        assert log.index("ready") < log.index("reload 1 done") < log.index("stopping")

        # a daemon that dies before READY=1 fails the start job
        r = c.systemctl("start", bad, check=False)
        assert r.returncode != 0
        assert c.show(bad, "ActiveState") == "failed"
        assert "failing before READY" in c.journal(bad)
    finally:
        c.systemctl("stop", unit, bad, check=False)
        c.systemctl("reset-failed", check=False)
        c.run(["rm", "-f", f"/run/systemd/system/{unit}", f"/run/systemd/system/{bad}",
               "/usr/local/bin/notify-smoke.py"], check=False)
        c.systemctl("daemon-reload", check=False)


# --------------------------------------------------------------------------- lifecycle


def test_second_container_runs_alongside_and_cleans_up(
    systemd_rootfs: Path, systemd_container: Container
) -> None:
    c = Container(systemd_rootfs)
    with c:
        assert c.system_state in ("running", "degraded")
        assert c.pid1 != systemd_container.pid1
        assert c.rootfs == systemd_container.rootfs  # one shared, pristine lower layer
        c.run(["touch", "/etc/only-in-this-one"])
        assert systemd_container.run(["test", "-e", "/etc/only-in-this-one"],
                                     check=False).returncode == 1
        assert c.rootfs is not None and not (c.rootfs / "etc/only-in-this-one").exists()
    assert not c.stop_forced, c.console_output()[-2000:]
    assert_cleaned_up(c)
    print(f"\nsecond container: boot {c.boot_seconds:.2f}s, stop {c.stop_seconds:.2f}s")


def test_nspawn_failure_is_reported_and_cleaned_up(systemd_rootfs: Path) -> None:
    c = Container(systemd_rootfs, bind_ro=["/nonexistent-xdplb-smoke"])
    with pytest.raises(ContainerError) as exc:
        c.start()
    msg = str(exc.value)
    assert "systemd-nspawn exited" in msg and "container console" in msg
    assert "nonexistent-xdplb-smoke" in msg, msg
    assert_cleaned_up(c)


def test_failed_boot_is_reported_and_cleaned_up(systemd_rootfs: Path) -> None:
    # emergency mode: PID 1 comes up but the system is in "maintenance"
    c = Container(systemd_rootfs, init_args=["systemd.unit=emergency.target"], boot_timeout=30)
    with pytest.raises(ContainerError) as exc:
        c.start()
    assert "maintenance" in str(exc.value), str(exc.value)
    assert "container console" in str(exc.value)
    assert_cleaned_up(c)


def test_boot_timeout_is_reported_and_cleaned_up(systemd_rootfs: Path) -> None:
    c = Container(systemd_rootfs, boot_timeout=0.01)
    with pytest.raises(ContainerError) as exc:
        c.start()
    assert "did not boot within" in str(exc.value)
    assert "container console" in str(exc.value)
    assert_cleaned_up(c)
