"""A throw-away systemd container for the unit tests: ``systemd-nspawn --boot``.

Recipe (measured on the Debian 12 / kernel 6.18 test VM, which has no systemd
as PID 1 and no machined):

- the rootfs is a debootstrap'd Debian bookworm, cached as a tarball by
  ``scripts/make-systemd-rootfs.sh`` and unpacked once next to it; every boot
  runs on ``--volatile=overlay`` (tmpfs upper layer), so the unpacked copy
  stays pristine and can be shared by several containers at once;
- ``--register=no --keep-unit``: there is no machined to register with;
- ``--system-call-filter='bpf perf_event_open' --capability=all``: BPF;
- ``--private-network``: the container gets its own netns (make veth/dummy
  interfaces inside it);
- a fresh bpffs *instance* is mounted on a host directory and bound to the
  container's ``/sys/fs/bpf``: pins made inside are visible from the host
  (``Container.bpffs_dir``) and vanish with the container;
- the kernel headers BCC needs are bind-mounted read-only at their host path
  (``/var/lib/xdplb/kernel-headers`` plus the ``/usr/src`` trees its symlinks
  point into), and ``BCC_KERNEL_SOURCE`` is set for commands run with
  :meth:`Container.run` (``Container.env``). Services do not inherit it: give a
  unit under test ``Environment=BCC_KERNEL_SOURCE=...`` in a drop-in, as an
  operator's install would;
- files go in through :meth:`Container.copy_in` / :meth:`Container.write_text`
  (staged in a host dir bound at ``/mnt/host``); an xdplbd wheel installs with
  ``pip install --no-deps --no-index --break-system-packages``: its Python
  deps are Debian packages in the image;
- commands run through ``nsenter -t <container PID 1> -a`` (no machinectl),
  with a clean environment;
- systemd 252 has no ``Type=notify-reload``: ``systemctl reload`` returns when
  ``ExecReload=`` exits, before the daemon has sent ``READY=1`` again. Wait on
  ``STATUS=`` or a reload counter (:meth:`Container.wait_until`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Callable, TypeVar

from xdplbd.service.daemonize import alive as _pid_alive  # gone or a zombie: not alive

T = TypeVar("T")

CACHE_DIR = Path(os.environ.get("XDPLB_TEST_CACHE", "/var/cache/xdplb-test"))
KERNEL_HEADERS_DIR = Path("/var/lib/xdplb/kernel-headers")
#: where the host share directory (``Container.share_dir``) appears inside
SHARE_MOUNT = "/mnt/host"
#: prefix of the per-container host temp dirs (swept when their owner is dead)
_TMP_PREFIX = "xdplb-nspawn-"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Symlink roots of a kernel header tree that may be bind-mounted (never /usr).
_HEADER_ROOTS = ("/usr/src/", "/usr/lib/linux-kbuild-", "/lib/modules/", "/var/lib/xdplb/")

_counter = itertools.count(1)
_live: set[Container] = set()


class ContainerError(RuntimeError):
    """The container could not be set up, booted or driven."""


class ContainerCommandError(subprocess.CalledProcessError):
    """A command in the container exited non-zero; ``str()`` shows its output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        parts = [super().__str__()]
        if out:
            parts.append(f"--- stdout ---\n{out[-4000:]}")
        if err:
            parts.append(f"--- stderr ---\n{err[-4000:]}")
        return "\n".join(parts)


# --------------------------------------------------------------------------- helpers


def wait_until(
    fn: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Call ``fn`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    return kids


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for kid in _children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _umount_all_under(path: Path) -> list[str]:
    errors = []
    for mnt in _mounts_under(path):
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            r = subprocess.run(["umount", "-l", mnt], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                errors.append(f"umount {mnt}: {r.stderr.strip()}")
    return errors


def _set_pdeathsig() -> None:
    """In the nspawn child: if the test process dies, nspawn gets SIGTERM (-> poweroff)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def sweep_stale(tmp_root: Path | None = None) -> list[str]:
    """Remove what containers of dead test processes left (mounts, temp dirs)."""
    root = Path(tmp_root or tempfile.gettempdir())
    swept = []
    for d in root.glob(_TMP_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and _pid_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            nspawn = int((d / "nspawn.pid").read_text())
            if _pid_alive(nspawn):
                continue  # its container still runs; let pdeathsig finish it
        _umount_all_under(d)
        if not _mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)
            swept.append(str(d))
    return swept


def kernel_header_binds() -> tuple[list[str], dict[str, str]]:
    """Read-only binds and environment that let BCC find kernel headers inside.

    Prefers the project's merged tree (``/var/lib/xdplb/kernel-headers``, set up by
    scripts/bootstrap.sh when the running kernel has no headers), which is a tree of
    absolute symlinks into ``/usr/src/linux-headers-*``: those trees are bound too.
    Otherwise binds ``/lib/modules/$(uname -r)`` and what its build/source links
    point to. In-kernel headers (``/sys/kernel/kheaders.tar.xz``) need nothing.
    """
    binds: list[str] = []
    env: dict[str, str] = {}
    roots: set[str] = set()

    def add_root(target: str) -> None:
        for prefix in _HEADER_ROOTS:
            if target.startswith(prefix):
                rest = target[len(prefix):].split("/", 1)[0]
                if rest:
                    roots.add(prefix + rest)  # /usr/src/linux-headers-X, ...
                return

    if (KERNEL_HEADERS_DIR / ".complete").exists() or (KERNEL_HEADERS_DIR / "include").is_dir():
        binds.append(str(KERNEL_HEADERS_DIR))
        env["BCC_KERNEL_SOURCE"] = str(KERNEL_HEADERS_DIR)
        for dirpath, dirnames, filenames in os.walk(KERNEL_HEADERS_DIR):
            for name in itertools.chain(dirnames, filenames):
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    target = os.readlink(p)
                    if target.startswith("/"):
                        add_root(os.path.normpath(target))
    else:
        moddir = Path("/lib/modules") / os.uname().release
        if (moddir / "build").exists():
            binds.append(str(moddir))
            for link in ("build", "source"):
                if (moddir / link).exists():
                    add_root(os.path.realpath(moddir / link))
    binds.extend(sorted(r for r in roots if Path(r).is_dir() and r not in binds))
    return binds, env


def unpacked_rootfs(tarball: Path, cache_dir: Path | None = None) -> Path:
    """Unpack ``tarball`` once into the cache (atomically) and return the directory.

    The directory is only ever used as the read-only lower layer of
    ``--volatile=overlay``, so one copy serves every container.
    """
    tarball = Path(tarball)
    st = tarball.stat()
    base = tarball.name.split(".tar")[0]
    cache = Path(cache_dir or tarball.parent)
    dest = cache / f"{base}-{st.st_size}.d"
    if dest.is_dir():  # only ever appears complete (rename)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(cache / ".unpack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir():
            return dest
        for stale in cache.glob(".unpack-*"):  # a crashed unpack (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            decomp = ["zstd", "-dc"] if tarball.name.endswith(".zst") else ["gzip", "-dc"]
            with subprocess.Popen([*decomp, str(tarball)], stdout=subprocess.PIPE) as dec:
                tar = subprocess.run(
                    ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                     "-C", str(work), "-xf", "-"],
                    stdin=dec.stdout, capture_output=True, text=True, check=False,
                )
                assert dec.stdout is not None
                dec.stdout.close()
            if dec.returncode != 0 or tar.returncode != 0:
                raise ContainerError(f"unpacking {tarball} failed: {tar.stderr.strip()}")
            os.rename(work, dest)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- container


class Container:
    """A booted ``systemd-nspawn --boot`` container; use as a context manager.

    >>> with Container(tarball) as c:
    ...     c.run(["systemctl", "is-system-running"]).stdout
    'running\\n'
    """

    def __init__(
        self,
        tarball: str | os.PathLike[str],
        *,
        name: str | None = None,
        boot_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        bind: Iterable[str] = (),
        bind_ro: Iterable[str] = (),
        kernel_headers: bool = True,
        extra_args: Sequence[str] = (),
        init_args: Sequence[str] = (),
    ) -> None:
        self.tarball = Path(tarball)
        self.name = name or f"xdplb-test-{os.getpid()}-{next(_counter)}"
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.extra_binds = list(bind)
        self.extra_binds_ro = list(bind_ro)
        self.kernel_headers = kernel_headers
        self.extra_args = list(extra_args)
        self.init_args = list(init_args)
        #: environment added to every :meth:`run` (BCC_KERNEL_SOURCE when needed)
        self.env: dict[str, str] = {}
        self._ro_binds: list[str] = []
        self.rootfs: Path | None = None
        self.tmpdir: Path | None = None
        self.bpffs_dir: Path | None = None
        self.share_dir: Path | None = None
        self.console_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.system_state: str | None = None
        #: True if stop() had to SIGKILL the container
        self.stop_forced = False
        self._console_text: str | None = None
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def nspawn_argv(self) -> list[str]:
        assert self.rootfs and self.bpffs_dir and self.share_dir
        argv = [
            "systemd-nspawn",
            "--boot",
            f"--directory={self.rootfs}",
            f"--machine={self.name}",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--private-network",
            "--capability=all",
            "--system-call-filter=bpf perf_event_open",
            "--link-journal=no",
            "--console=read-only",
            f"--bind={self.bpffs_dir}:/sys/fs/bpf",
            f"--bind={self.share_dir}:{SHARE_MOUNT}",
        ]
        argv += [f"--bind={b}" for b in self.extra_binds]
        argv += [f"--bind-ro={b}" for b in self._ro_binds]
        argv += self.extra_args
        if self.init_args:
            argv += ["--", *self.init_args]
        return argv

    def start(self) -> Container:
        if os.geteuid() != 0:
            raise ContainerError("the systemd container needs root (systemd-nspawn, bpffs mounts)")
        for tool in ("systemd-nspawn", "nsenter", "mount", "umount"):
            if shutil.which(tool) is None:
                raise ContainerError(f"{tool} not found (scripts/bootstrap.sh installs it)")
        sweep_stale()
        _live.add(self)
        t0 = time.monotonic()
        try:
            self.rootfs = unpacked_rootfs(self.tarball)
            self.tmpdir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))
            (self.tmpdir / "owner.pid").write_text(str(os.getpid()))
            self.bpffs_dir = self.tmpdir / "bpffs"
            self.share_dir = self.tmpdir / "share"
            self.bpffs_dir.mkdir()
            self.share_dir.mkdir()
            self.console_path = self.tmpdir / "console.log"
            # a fresh bpffs instance (each mount of bpf is a new superblock)
            subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs_dir)],
                           check=True, capture_output=True, text=True)
            self._ro_binds = list(self.extra_binds_ro)
            if self.kernel_headers:
                hb, henv = kernel_header_binds()
                self._ro_binds += [b for b in hb if b not in self._ro_binds]
                self.env.update(henv)
            with open(self.console_path, "wb") as console:
                self.proc = subprocess.Popen(
                    self.nspawn_argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_set_pdeathsig,
                )
            (self.tmpdir / "nspawn.pid").write_text(str(self.proc.pid))
            self._wait_booted(t0)
            self.boot_seconds = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        for kid in _children(self.proc.pid):
            try:
                with open(f"/proc/{kid}/status") as f:
                    status = dict(
                        line.split(":", 1) for line in f.read().splitlines() if ":" in line
                    )
                with open(f"/proc/{kid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            nspid = status.get("NSpid", "").split()
            if len(nspid) >= 2 and nspid[-1] == "1" and comm != "systemd-nspawn":
                return kid
        return None

    def _wait_booted(self, t0: float) -> None:
        assert self.proc is not None
        deadline = t0 + self.boot_timeout
        state = "(no PID 1 yet)"
        while True:
            if self.proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with status {self.proc.returncode} during boot\n"
                    + self._console_report()
                )
            if self.pid1 is None:
                self.pid1 = self._find_pid1()
            if self.pid1 is not None:
                left = max(0.5, min(5.0, deadline - time.monotonic()))
                try:
                    r = self._nsenter(["systemctl", "is-system-running"], timeout=left)
                    state = (r.stdout.strip() or r.stderr.strip() or "?").splitlines()[-1]
                except subprocess.TimeoutExpired:
                    state = "(systemctl is-system-running timed out)"
                if state in ("running", "degraded"):
                    self.system_state = state
                    return
                if state in ("maintenance", "stopping"):
                    raise ContainerError(
                        f"container {self.name} boot failed: system state {state!r}\n"
                        + self._diagnostics()
                        + self._console_report()
                    )
            if time.monotonic() >= deadline:
                raise ContainerError(
                    f"container {self.name} did not boot within {self.boot_timeout:.1f}s "
                    f"(last state {state!r})\n" + self._diagnostics() + self._console_report()
                )
            time.sleep(0.05)

    def _diagnostics(self) -> str:
        if self.pid1 is None or not _pid_alive(self.pid1):
            return ""
        out = []
        for argv in (["systemctl", "--failed", "--no-pager"],
                     ["systemctl", "list-jobs", "--no-pager"]):
            with contextlib.suppress(Exception):
                r = self._nsenter(argv, timeout=5)
                out.append(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}")
        return "".join(out)

    def _console_report(self, lines: int = 60) -> str:
        text = self.console_output()
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- container console (last {lines} lines) ---\n{tail}\n--- end of console ---"

    def console_output(self) -> str:
        """Everything nspawn and the container's console printed so far."""
        if self._console_text is not None:
            return self._console_text
        if self.console_path and self.console_path.exists():
            # the console is a pty: CRLF line ends
            return self.console_path.read_text(errors="replace").replace("\r\n", "\n")
        return ""

    def stop(self) -> None:
        """Power the container off and remove every process, mount and temp dir.

        Idempotent, and safe on a half-started container. Falls back to SIGKILL of
        the container's PID 1 (which takes its whole PID namespace) and of nspawn.
        """
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        errors: list[str] = []
        proc = self.proc
        # whatever nspawn has spawned so far (PID 1 may not be known yet on a failed boot)
        spawned = _descendants(proc.pid) if proc is not None and proc.poll() is None else []
        try:
            if proc is not None and proc.poll() is None:
                # nspawn turns SIGTERM into SIGRTMIN+3 for PID 1: an orderly poweroff
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.stop_forced = True
                    for pid in (self.pid1, proc.pid):
                        if pid:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        errors.append(f"systemd-nspawn {proc.pid} survived SIGKILL")
            leftovers = [p for p in {*spawned, self.pid1 or 0} if p and _pid_alive(p)]
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if leftovers:
                self.stop_forced = True
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not any(_pid_alive(p) for p in leftovers), 10,
                               "container processes to die")
                if any(_pid_alive(p) for p in leftovers):
                    errors.append(f"processes survived SIGKILL: {leftovers}")
        finally:
            self._console_text = self.console_output() or None
            if self.tmpdir is not None:
                errors += _umount_all_under(self.tmpdir)
                if _mounts_under(self.tmpdir):
                    errors.append(f"mounts left under {self.tmpdir}")
                else:
                    shutil.rmtree(self.tmpdir, ignore_errors=True)
            _live.discard(self)
            self.stop_seconds = time.monotonic() - t0
        if errors:
            raise ContainerError(f"cleanup of {self.name} incomplete: " + "; ".join(errors))

    # -- driving it -----------------------------------------------------------------

    def _nsenter(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self.pid1 is not None
        full_env = {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                    "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", **self.env, **(env or {})}
        cmd = ["nsenter", "-t", str(self.pid1), "-a", "--", "env", "-i",
               *(f"{k}={v}" for k, v in full_env.items()), *argv]
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # nsenter forks into the container's PID namespace: kill that tree too
            for pid in reversed(_descendants(p.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            p.kill()
            out, err = p.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
        return subprocess.CompletedProcess(list(argv), p.returncode, out, err)

    def _require_running(self) -> None:
        if self.pid1 is None or self._stopped or not _pid_alive(self.pid1):
            raise ContainerError(f"container {self.name} is not running\n" + self._console_report())

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces, clean environment).

        Output is captured as text. ``check`` raises :class:`ContainerCommandError`
        (whose message includes stdout and stderr); ``timeout`` raises
        ``subprocess.TimeoutExpired`` after killing the command's process tree.
        """
        self._require_running()
        r = self._nsenter(argv, input=input, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise ContainerCommandError(r.returncode, list(argv), r.stdout, r.stderr)
        return r

    def sh(self, script: str, check: bool = True, timeout: float = 60.0,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell script (``sh -ec``) inside the container."""
        return self.run(["sh", "-ec", script], check=check, timeout=timeout, input=input)

    def copy_in(self, host_path: str | os.PathLike[str], container_path: str) -> None:
        """Copy a host file or directory to ``container_path`` (a dir's *contents* go there)."""
        self._require_running()
        assert self.share_dir is not None
        src = Path(host_path)
        if not src.exists():
            raise FileNotFoundError(src)
        token = uuid.uuid4().hex
        staged = self.share_dir / token
        try:
            if src.is_dir():
                shutil.copytree(src, staged, symlinks=True)
                self.run(["sh", "-ec", 'mkdir -p "$2" && cp -a "$1"/. "$2"/', "sh",
                          f"{SHARE_MOUNT}/{token}", container_path])
            else:
                shutil.copy2(src, staged)
                self.run(["sh", "-ec", 'mkdir -p "$(dirname "$2")" && cp -a "$1" "$2"', "sh",
                          f"{SHARE_MOUNT}/{token}", container_path])
        finally:
            if staged.is_dir() and not staged.is_symlink():
                shutil.rmtree(staged, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()

    def write_text(self, container_path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to a file inside the container."""
        self._require_running()
        assert self.share_dir is not None
        staged = self.share_dir / uuid.uuid4().hex
        try:
            staged.write_text(text)
            staged.chmod(mode)
            self.copy_in(staged, container_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    def read_text(self, container_path: str) -> str:
        return self.run(["cat", container_path]).stdout

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        """``systemctl show -p PROP --value UNIT``."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.rstrip("\n")

    def journal(self, unit: str, output: str = "cat", extra: Sequence[str] = ()) -> str:
        """The unit's journal (``journalctl -u UNIT -o cat`` by default), after a sync."""
        self.run(["journalctl", "--sync"], check=False, timeout=30)
        return self.run(["journalctl", "--no-pager", "-u", unit, "-o", output, *extra]).stdout

    def wait_until(self, fn: Callable[[], T | None], timeout: float = 30.0,
                   what: str = "condition", interval: float = 0.05) -> T:
        return wait_until(fn, timeout, what, interval)


@atexit.register
def _stop_leftovers() -> None:
    for c in list(_live):
        with contextlib.suppress(Exception):
            c.stop()
