"""`xdplb start` / `xdplb stop`: the original C xdplb's daemon mode, kept.

start: double fork, then exec `python -m xdplbd.service.daemonize --pid-file F -- <xdplbd
args>`, which holds an flock on the PID file, writes its pid there and runs the
daemon in the same process; the file is removed when the daemon exits. The
command returns once the daemon has applied its config and attached (its
state.toml names its pid and an applied_at time), or fails with the tail of
the daemon's log.

stop: SIGTERM to the PID file's process, then wait until it is gone. Like any
xdplbd exit, this leaves the data plane attached and forwarding.

A PID file whose pid is dead, or is not an xdplbd, is stale: it never blocks
a start, and stop removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xdplbd.service.statefile import read_state

DEFAULT_PID_FILE = "/run/xdplb.pid"
DEFAULT_LOG_FILE = "/var/log/xdplb.log"
DEFAULT_PIN_DIR = "/sys/fs/bpf/xdplb"  # as xdplbd's --pin-dir (daemon.py)
# The directory holding the xdplbd package (this file is xdplbd/<layer>/<module>.py).
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Today's module paths, and those of daemons started before the layer packages.
_DAEMON_MODULES = ("xdplbd.service.daemon", "xdplbd.service.daemonize",
                   "xdplbd.daemon", "xdplbd.daemonize")
# Variables meant for a service manager's own child, never for a daemon we detach.
_SCRUB_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS",
              "LISTEN_PID", "LISTEN_FDNAMES")


class StartError(RuntimeError):
    pass


# --- processes ----------------------------------------------------------------------

def proc_argv(pid: int) -> Optional[List[str]]:
    """argv of a running process; None if it is gone or a zombie (empty cmdline)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has). Unlike cmdline, which
    reads empty for a moment while a process execs, its stat is always there."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def is_daemon_argv(argv: Sequence[str]) -> bool:
    """An xdplbd daemon: `xdplbd ...`, `python [opts] .../xdplbd ...`, or `python [opts]
    -m xdplbd.service.daemon|xdplbd.service.daemonize ...` (not the `xdplb` CLI, nor
    `vi xdplbd`)."""
    if not argv:
        return False
    if os.path.basename(argv[0]) == "xdplbd":
        return True
    if not os.path.basename(argv[0]).startswith("python"):
        return False
    rest = list(argv[1:])
    while rest and rest[0].startswith("-") and rest[0] != "-m":
        rest.pop(0)  # interpreter options (-u, -E, -I ...)
    if rest[:1] == ["-m"]:
        return len(rest) > 1 and rest[1] in _DAEMON_MODULES
    return bool(rest) and os.path.basename(rest[0]) == "xdplbd"


def running(pid: int) -> bool:
    """True if `pid` is a live (not zombie) xdplbd."""
    argv = proc_argv(pid)
    return argv is not None and is_daemon_argv(argv)


def argv_pin_dir(pid: int, argv: Sequence[str]) -> str:
    """The --pin-dir an xdplbd runs with, as an absolute path."""
    pin = DEFAULT_PIN_DIR
    for i, a in enumerate(argv):
        if a == "--pin-dir" and i + 1 < len(argv):
            pin = argv[i + 1]
        elif a.startswith("--pin-dir="):
            pin = a.split("=", 1)[1]
    if not os.path.isabs(pin):
        with contextlib.suppress(OSError):
            pin = os.path.join(os.readlink(f"/proc/{pid}/cwd"), pin)
    return os.path.normpath(pin)


def daemons_on(pin_dir: str) -> List[int]:
    """Every live xdplbd using `pin_dir`, in any network namespace."""
    want = os.path.normpath(os.path.abspath(pin_dir))
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        argv = proc_argv(int(name))
        if argv and is_daemon_argv(argv) and argv_pin_dir(int(name), argv) == want:
            out.append(int(name))
    return sorted(out)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# --- PID file --------------------------------------------------------------------------

def read_pid_file(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def remove_pid_file(path: str, pid: Optional[int]) -> None:
    """Remove the PID file if it still names `pid` (or anything, if pid is None)."""
    if pid is None or read_pid_file(path) == pid:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- start -------------------------------------------------------------------------------

@dataclass
class StartOptions:
    config: str
    pin_dir: str
    state_dir: str
    interface: Optional[str] = None
    xdp_mode: Optional[str] = None
    pid_file: str = DEFAULT_PID_FILE
    log_file: str = DEFAULT_LOG_FILE
    syslog: bool = True
    verbose: bool = False
    timeout: float = 60.0
    extra: List[str] = field(default_factory=list)

    def absolute(self) -> StartOptions:
        """Paths made absolute: the daemon runs with / as its working directory."""
        a = os.path.abspath
        return StartOptions(a(self.config), a(self.pin_dir), a(self.state_dir), self.interface,
                            self.xdp_mode, a(self.pid_file), a(self.log_file), self.syslog,
                            self.verbose, self.timeout, list(self.extra))

    def daemon_args(self) -> List[str]:
        args = ["-c", self.config, "--pin-dir", self.pin_dir, "--state-dir", self.state_dir,
                "--log-file", self.log_file]
        if self.interface:
            args += ["-i", self.interface]
        if self.xdp_mode:
            args += ["--xdp-mode", self.xdp_mode]
        if self.syslog:
            args.append("--syslog")
        if self.verbose:
            args.append("-v")
        return args + self.extra


def conflict(pin_dir: str, state_dir: str, pid_file: Optional[str]) -> Optional[str]:
    """Why a daemon must not start on these pins now, or None."""
    pin_dir = os.path.normpath(os.path.abspath(pin_dir))
    if pid_file:
        pid = read_pid_file(pid_file)
        argv = proc_argv(pid) if pid else None
        if pid and argv and is_daemon_argv(argv):
            return (f"xdplbd is already running (pid {pid}, PID file {pid_file}, pins "
                    f"{argv_pin_dir(pid, argv)}); stop it first with `xdplb stop`")
    pid = int(read_state(state_dir).get("pid", 0) or 0)
    argv = proc_argv(pid)
    if argv and is_daemon_argv(argv):
        pins = argv_pin_dir(pid, argv)
        where = f"on {pin_dir}" if pins == pin_dir else f"with state in {state_dir} (pins {pins})"
        return (f"xdplbd is already running {where} (pid {pid}); stop it first, or give "
                "another --pin-dir and --state-dir")
    others = daemons_on(pin_dir)
    if others:
        return (f"xdplbd is already running on {pin_dir} (pid {others[0]}); two daemons must "
                "not share pins: stop it first, or give another --pin-dir")
    return None


def child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + path if path else "")
    return env


def spawn_detached(argv: List[str], log_file: str) -> int:
    """Double fork and exec `argv` with no controlling terminal; returns its pid.

    stdin is /dev/null; stdout and stderr append to `log_file`, so even a crash
    before logging is set up leaves its traceback there.
    """
    env = child_env()
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked children
        try:
            os.close(r)
            os.setsid()  # a new session: no controlling terminal, own process group
            second = os.fork()
            if second:
                os.write(w, str(second).encode())
                os._exit(0)
            # The grandchild: not a session leader, so it can never reacquire a terminal.
            os.close(w)
            os.chdir("/")
            os.umask(0o022)
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execve(argv[0], argv, env)
        except BaseException as e:  # report anything, then die
            with contextlib.suppress(OSError):
                os.write(2, f"xdplb: cannot start the daemon: {e}\n".encode())
        os._exit(127)
    os.close(w)
    try:
        data = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(first, 0)
    if not data:
        raise StartError(f"fork failed (status {status})")
    return int(data)


def log_tail(path: str, offset: int, lines: int = 20) -> str:
    """The last `lines` lines the log got after `offset`."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(pid: int, state_dir: str, timeout: float) -> Tuple[str, Dict[str, Any]]:
    """("ready", state) once the daemon's state.toml names it; ("exited" | "timeout", {})."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(state_dir)
        if state.get("pid") == pid and state.get("applied_at"):
            return "ready", state
        if not alive(pid):
            return "exited", {}
        if time.monotonic() >= deadline:
            return "timeout", {}
        time.sleep(0.05)


def log_offset(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def start(opts: StartOptions) -> Tuple[int, str]:
    """Start a detached daemon; returns (pid, one-line summary) or raises StartError."""
    opts = opts.absolute()
    why = conflict(opts.pin_dir, opts.state_dir, opts.pid_file)
    if why:
        raise StartError(why)
    stale = read_pid_file(opts.pid_file)
    if stale is not None or os.path.exists(opts.pid_file):
        remove_pid_file(opts.pid_file, stale)  # not a live xdplbd: conflict() said so
    for path in (opts.pid_file, opts.log_file):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    offset = log_offset(opts.log_file)
    argv = [sys.executable, "-m", "xdplbd.service.daemonize", "--pid-file", opts.pid_file, "--",
            *opts.daemon_args()]
    pid = spawn_detached(argv, opts.log_file)
    outcome, state = wait_ready(pid, opts.state_dir, opts.timeout)
    if outcome == "ready":
        vips = state.get("vips")
        n_vips = len(vips) if isinstance(vips, list) else 0
        return pid, (f"xdplbd started (pid {pid}) on {state.get('interface')} "
                     f"({state.get('xdp_mode')} XDP): generation {state.get('generation')}, "
                     f"{n_vips} VIPs; log {opts.log_file}")
    tail = log_tail(opts.log_file, offset)
    if outcome == "timeout":
        raise StartError(f"xdplbd (pid {pid}) is not ready after {opts.timeout:.0f} s; it is "
                         f"still running. Its log ({opts.log_file}) ends:\n{tail}")
    raise StartError(f"xdplbd failed to start; its log ({opts.log_file}) says:\n{tail}")


# --- stop ------------------------------------------------------------------------------

def stop(pid_file: str, pin_dir: str, timeout: float = 30.0) -> Tuple[int, str]:
    """SIGTERM the daemon named by `pid_file` and wait; returns (exit code, message)."""
    pid = read_pid_file(pid_file)
    if pid is None or not running(pid):
        note = ""
        if os.path.exists(pid_file):
            remove_pid_file(pid_file, pid)
            note = f" (removed stale PID file {pid_file})"
        others = daemons_on(pin_dir)
        if others:
            return 1, (f"no xdplbd started by `xdplb start` (PID file {pid_file}){note}, but "
                       f"xdplbd pid {others[0]} runs on {os.path.abspath(pin_dir)}: stop it "
                       "the way it was started (systemctl stop xdplb, or kill it)")
        return 0, f"xdplbd is not running{note or f' (no PID file {pid_file})'}"
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        return 1, (f"xdplbd (pid {pid}) did not exit within {timeout:.0f} s of SIGTERM; "
                   f"`kill -9 {pid}` stops it (the data plane stays attached either way)")
    remove_pid_file(pid_file, pid)
    return 0, (f"xdplbd (pid {pid}) stopped; the data plane stays attached and forwarding "
               "(`xdplb detach` removes it)")


# --- the daemon side: `python -m xdplbd.service.daemonize --pid-file F -- ARGS` -----------------

def hold_pid_file(path: str) -> int:
    """Lock and write the PID file; the lock lives as long as this process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartError(f"PID file {path} is held by a running xdplbd "
                         f"(pid {read_pid_file(path)})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="xdplbd (xdplb start)")
    p.add_argument("--pid-file", required=True)
    p.add_argument("daemon_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = list(args.daemon_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        fd = hold_pid_file(args.pid_file)
    except (StartError, OSError) as e:
        print(f"xdplbd: {e}", file=sys.stderr)
        return 1
    from xdplbd.service import daemon  # imported here: `xdplb start` itself never needs it

    try:
        return daemon.main(rest)
    finally:
        remove_pid_file(args.pid_file, os.getpid())
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
