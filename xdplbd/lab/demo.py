"""`sudo make demo`: xdplb end to end in a namespace lab, in well under a minute.

It builds the lab (a client, the LB and four reals on a bridge, see lab.py),
starts xdplbd in the LB's namespace with the lab's built-in config (real1-3
behind a v4 TCP, a v4 UDP and a v6 TCP VIP), drives traffic with curl and wrk,
shows which real answered how many requests, the LB's counters and the proof
of Direct Server Return, then edits the config live (real4 joins, under load)
and takes everything down again, also on Ctrl-C or failure.

The building blocks (:class:`LbDaemon`, :class:`Wrk`, :func:`lb_config`) also
drive the end-to-end tests in tests/e2e.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Union

from xdplbd.kernel.loader import remove_pins
from xdplbd.lab import sources
from xdplbd.lab.topology import IFNAME, NETNS_DIR, Lab, LabSpec, nsenter_cmd
from xdplbd.service.statefile import read_state

DEMO_PREFIX = "xldemo"
DEMO_PIN_DIR = "/sys/fs/bpf/xdplb-demo"

# --------------------------------------------------------------------------- helpers


def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    abort: Optional[Callable[[], Optional[str]]] = None,
    interval: float = 0.01,
) -> Any:
    """Poll *cond* until it returns something truthy (returned); raise TimeoutError after
    *timeout* s. *abort* returns a reason to give up early (e.g. the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def lb_config(
    lab: Lab, weights: Mapping[str, int], *, extra: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """lb_conf.json for *lab* with the reals named in *weights* (name -> weight), in that
    order, behind each of the lab's VIPs (v4 TCP, v4 UDP, v6 TCP)."""
    cfg = lab.config()
    by_ip = {ip: r.name for r in lab.reals for ip in (r.ip4, r.ip6)}
    for vip in cfg["vips"]:
        reals = {by_ip[r["ip"]]: r for r in vip["reals"]}
        vip["reals"] = [dict(reals[name], weight=w) for name, w in weights.items()]
    if extra:
        cfg.update(extra)
    return cfg


def iface_counters(ns: str, ifname: str = IFNAME) -> Dict[str, int]:
    """rx/tx packets and bytes of *ifname* in netns *ns*."""
    out = subprocess.run(
        nsenter_cmd(ns, ["ip", "-s", "-j", "link", "show", ifname]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    s = json.loads(out)[0]["stats64"]
    return {
        "rx_packets": s["rx"]["packets"],
        "rx_bytes": s["rx"]["bytes"],
        "tx_packets": s["tx"]["packets"],
        "tx_bytes": s["tx"]["bytes"],
    }


# --------------------------------------------------------------------------- the daemon


class DaemonError(RuntimeError):
    pass


class LbHost(Protocol):
    """Where an :class:`LbDaemon` runs: the single-LB :class:`Lab`, or one node of the
    scale-out lab (lab/scaleout.py)."""

    @property
    def ns_lb(self) -> str: ...

    @property
    def state_dir(self) -> str: ...


class ClientHost(Protocol):
    """Where :class:`Wrk` runs: a lab's client namespace, and a directory for its script."""

    @property
    def ns_client(self) -> str: ...

    @property
    def state_dir(self) -> str: ...


class LbDaemon:
    """xdplbd in a lab's LB namespace, with its own config file, pin and state dirs.

    Its files live under ``<lab state dir>/xdplbd/`` (so ``Lab.down()`` removes them);
    the pins under *pin_dir*, which :meth:`close` removes with ``xdplb detach``.
    """

    def __init__(
        self,
        lab: LbHost,
        pin_dir: str,
        *,
        xdp_mode: Optional[str] = None,
        workdir: Optional[str] = None,
    ) -> None:
        self.lab = lab
        self.pin_dir = pin_dir
        self.xdp_mode = xdp_mode
        self.workdir = workdir or os.path.join(lab.state_dir, "xdplbd")
        # The config sits alone in its directory: the daemon watches that directory.
        self.config_path = os.path.join(self.workdir, "conf", "lb_conf.json")
        self.state_dir = os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "xdplbd.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.env: Dict[str, str] = {}  # extra environment (the soak's APPLY_DELAY_ENV)

    # -- process
    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.running() and self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _died(self) -> Optional[str]:
        if self.proc is not None and self.proc.poll() is not None:
            return f"xdplbd exited with {self.proc.returncode}:\n{self.log_tail()}"
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_lines(self) -> List[str]:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def argv(self) -> List[str]:
        argv = [sys.executable, "-m", "xdplbd.service.daemon", "-c", self.config_path]
        argv += ["--pin-dir", self.pin_dir, "--state-dir", self.state_dir]
        if self.xdp_mode:
            argv += ["--xdp-mode", self.xdp_mode]
        return nsenter_cmd(self.lab.ns_lb, argv)

    def start(self, timeout: float = 60.0) -> float:
        """Start xdplbd; return once it has applied the config and attached (seconds)."""
        if self.running():
            raise DaemonError(f"xdplbd already running (pid {self.pid})")
        os.makedirs(self.workdir, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C meant for the demo must not reach it.
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        self.proc = proc
        # nsenter execs xdplbd in place, so the pid is the daemon's; state.toml names it
        # once the first apply is done and the program is attached.
        wait_for(
            lambda: self.state().get("pid") == proc.pid,
            timeout,
            "xdplbd to become ready",
            abort=self._died,
        )
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        """Signal the daemon and wait for it to exit; its return code (None if none ran)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise DaemonError(f"xdplbd ignored signal {sig} for {timeout}s") from None
        return proc.returncode

    def kill(self) -> Optional[int]:
        return self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 60.0) -> float:
        self.stop()
        return self.start(timeout)

    # -- state and config
    def state(self) -> Dict[str, Any]:
        return read_state(self.state_dir)

    def write_config(self, cfg: Union[Mapping[str, Any], str]) -> str:
        """Replace the config file atomically (as editors do); its sha256."""
        text = cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2) + "\n"
        data = text.encode()
        os.makedirs(os.path.dirname(self.config_path), exist_ok=True)
        tmp = self.config_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.config_path)
        return hashlib.sha256(data).hexdigest()

    def apply(self, cfg: Union[Mapping[str, Any], str], timeout: float = 15.0) -> float:
        """Write the config and wait until the daemon (its file watch) has applied it.
        Returns the seconds from the write to state.toml naming the new config."""
        if not self.running():
            raise DaemonError("xdplbd is not running")
        before = int(self.state().get("reloads", 0))
        t0 = time.monotonic()
        digest = self.write_config(cfg)

        def applied() -> bool:
            s = self.state()
            return int(s.get("reloads", 0)) > before and s.get("config_digest") == digest

        wait_for(applied, timeout, "xdplbd to apply the new config", abort=self._died)
        return time.monotonic() - t0

    def apply_invalid(self, text: str, timeout: float = 15.0) -> Dict[str, Any]:
        """Write a config the daemon must reject; wait for the rejection and return it."""
        if not self.running():
            raise DaemonError("xdplbd is not running")
        before = int(self.state().get("reloads", 0))
        self.write_config(text)

        def rejected() -> Optional[Dict[str, Any]]:
            s = self.state()
            last: Dict[str, Any] = s.get("last_reload", {})
            ok = int(s.get("reloads", 0)) > before and last.get("result") == "rejected"
            return last if ok else None

        result: Dict[str, Any] = wait_for(
            rejected, timeout, "xdplbd to reject the config", abort=self._died
        )
        return result

    # -- the CLI
    def cli(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`xdplb ARGS --pin-dir P --state-dir S`, run in the LB's namespace."""
        return subprocess.run(
            self.cli_argv(*args),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def cli_argv(self, *args: str) -> List[str]:
        """The command line of `xdplb ARGS` for this daemon, in the LB's namespace."""
        argv = [sys.executable, "-m", "xdplbd.cli", *args]
        argv += ["--pin-dir", self.pin_dir, "--state-dir", self.state_dir]
        return nsenter_cmd(self.lab.ns_lb, argv)

    def reload(self) -> subprocess.CompletedProcess[str]:
        """`xdplb reload`: SIGHUP, returns after the daemon has applied (or rejected)."""
        return self.cli("reload", check=False)

    def stats(self) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(self.cli("stats", "--json").stdout)
        return data

    def close(self) -> None:
        """Stop the daemon and remove the data plane (`xdplb detach`) and the pins."""
        try:
            with contextlib.suppress(DaemonError):  # it ignored SIGTERM: stop() killed it
                self.stop()
            if os.path.exists(os.path.join(NETNS_DIR, self.lab.ns_lb)):
                self.cli("detach", "-i", IFNAME, check=False)
        finally:
            remove_pins(self.pin_dir)


# --------------------------------------------------------------------------- wrk

# Counts responses per status and per real (nginx answers its name), summed over
# wrk's threads in done(), and prints one JSON line with wrk's own error counters.
WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) reals = {}; statuses = {} end
function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  local name = string.match(body or "", "^([%w_-]+)") or "?"
  reals[name] = (reals[name] or 0) + 1
end
local function obj(t)
  local p = {}
  for k, v in pairs(t) do p[#p + 1] = string.format("%q:%d", k, v) end
  return "{" .. table.concat(p, ",") .. "}"
end
function done(summary, latency, requests)
  local r, s = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("reals") or {}) do r[k] = (r[k] or 0) + v end
    for k, v in pairs(t:get("statuses") or {}) do s[k] = (s[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format(
    'XDPLB-WRK {"duration_us":%d,"requests":%d,"bytes":%d,"errors":{"connect":%d,' ..
    '"read":%d,"write":%d,"status":%d,"timeout":%d},"reals":%s,"statuses":%s,' ..
    '"p99_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, obj(r), obj(s), latency:percentile(99)))
end
"""
_WRK_TAG = "XDPLB-WRK "


@dataclass
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: Dict[str, int]
    reals: Dict[str, int]
    statuses: Dict[str, int]
    p99_ms: float
    connections: int = 0
    new_connections: bool = False
    output: str = field(default="", repr=False)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not code.startswith("2"))

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors (resets show up as read errors)."""
        return sum(self.errors.get(k, 0) for k in ("connect", "read", "write", "timeout"))

    @property
    def failed(self) -> int:
        """Every request that did not get a 2xx answer."""
        return self.socket_errors + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def mode(self) -> str:
        return "new-conn" if self.new_connections else "keep-alive"

    @classmethod
    def parse(cls, output: str, connections: int, new_connections: bool) -> WrkResult:
        for line in output.splitlines():
            if line.startswith(_WRK_TAG):
                d = json.loads(line[len(_WRK_TAG) :])
                return cls(
                    duration_s=d["duration_us"] / 1e6,
                    requests=d["requests"],
                    bytes=d["bytes"],
                    errors=d["errors"],
                    reals=d["reals"],
                    statuses=d["statuses"],
                    p99_ms=d["p99_us"] / 1000,
                    connections=connections,
                    new_connections=new_connections,
                    output=output,
                )
        raise RuntimeError(f"wrk printed no result:\n{output}")


class Wrk:
    """wrk in the client namespace, for a bounded time or until :meth:`stop`.

    ``new_connections`` sends ``Connection: close``: one TCP connection per request.
    """

    def __init__(
        self,
        lab: ClientHost,
        url: str,
        *,
        connections: int = 16,
        threads: int = 1,
        new_connections: bool = False,
        duration: float = 60.0,
        timeout: float = 3.0,
        source: Optional[int] = None,
    ) -> None:
        self.lab = lab
        self.source = source  # a client source address (lab/sources.py), else the primary
        self.url = url
        self.connections = connections
        self.threads = threads
        self.new_connections = new_connections
        self.duration = duration
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen[str]] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Wrk:
        script = os.path.join(self.lab.state_dir, "wrk-count.lua")
        if not os.path.exists(script):
            with open(script + ".tmp", "w") as f:
                f.write(WRK_LUA)
            os.replace(script + ".tmp", script)
        argv = ["wrk", "-t", str(self.threads), "-c", str(self.connections)]
        argv += ["-d", f"{max(1, round(self.duration))}s", "--timeout", f"{self.timeout:g}s"]
        argv += ["-s", script]
        if self.new_connections:
            argv += ["-H", "Connection: close"]
        argv += [self.url]
        if self.source is not None:
            argv = sources.as_source(self.source, argv)
        self.proc = subprocess.Popen(
            nsenter_cmd(self.lab.ns_client, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return self

    def stop(self, timeout: float = 15.0) -> WrkResult:
        """End the run now (SIGINT: wrk stops and reports) and return the result."""
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: Optional[float] = None) -> WrkResult:
        assert self.proc is not None
        if timeout is None:
            timeout = self.duration + 15
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise RuntimeError(f"wrk did not finish:\n{out}") from None
        return WrkResult.parse(out, self.connections, self.new_connections)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def run(self) -> WrkResult:
        self.start()
        try:
            return self.wait()
        finally:
            self.kill()


# --------------------------------------------------------------------------- the demo


def _host(addr: str) -> str:
    """An address as it appears before :port, escaped for rich markup."""
    return f"\\[{addr}]" if ":" in addr else addr


class Demo:
    """The demo's steps; :meth:`run` always ends with a clean-up."""

    STEPS = 6

    def __init__(self, prefix: str, pin_dir: str, wrk_seconds: float) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, emoji=False)
        self.lab = Lab(LabSpec(prefix=prefix, n_reals=4))
        self.lb = LbDaemon(self.lab, pin_dir)
        self.wrk_seconds = wrk_seconds
        self.total_requests = 0
        self.total_failed = 0
        self.step_no = 0

    # -- output helpers (dynamic text is escaped: "[fd00::1]" is not markup)
    def step(self, title: str) -> None:
        self.step_no += 1
        self.console.print()
        self.console.rule(f"[bold cyan]{self.step_no}/{self.STEPS}  {title}", align="left")

    def say(self, markup: str) -> None:
        self.console.print("  " + markup)

    def cmd(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"  [dim]$ {escape(text)}[/dim]", soft_wrap=True)

    def verbatim(self, text: str, indent: str = "    ", style: str = "") -> None:
        for line in text.splitlines():
            self.console.print(indent + line, markup=False, soft_wrap=True, style=style)

    def answers(self, names: Sequence[str]) -> None:
        colors = {"real1": "cyan", "real2": "magenta", "real3": "yellow", "real4": "green"}
        self.say("  -> " + "  ".join(f"[bold {colors.get(n, 'white')}]{n}[/]" for n in names))

    @contextlib.contextmanager
    def spinner(self, text: str) -> Iterator[None]:
        with self.console.status(f"  {text}", spinner="dots"):
            yield

    # -- steps
    def lab_up(self) -> None:
        from rich.table import Table

        self.step("The lab: a client, the LB and 4 reals on one bridge")
        t0 = time.monotonic()
        self.lab.up()
        lab = self.lab
        t = Table(box=None, padding=(0, 2), header_style="bold")
        for col in ("", "netns", "IPv4", "IPv6", "MAC"):
            t.add_column(col)
        t.add_row("client", lab.ns_client, lab.client_ip4, lab.client_ip6, lab.client_mac)
        t.add_row("[bold]LB[/]", lab.ns_lb, lab.lb_ip4, lab.lb_ip6, lab.lb_mac)
        for r in lab.reals:
            t.add_row(r.name, r.ns, r.ip4, r.ip6, r.mac)
        self.console.print(t)
        self.say(f"VIPs [bold]{lab.vip4}[/] and [bold]{lab.vip6}[/] (tcp/80, udp/5353) on the "
                 "LB's eth0")
        self.say("and on each real's lo (arp_ignore=1, arp_announce=2): reals reply directly")
        self.say(f"[green]up[/] in {time.monotonic() - t0:.2f} s; each real answers with its name")

    def start_daemon(self) -> None:
        self.step("xdplbd in the LB's namespace, with the lab's built-in config")
        self.lb.write_config(lb_config(self.lab, {"real1": 1, "real2": 1, "real3": 1}))
        self.cmd(f"nsenter --net=/run/netns/{self.lab.ns_lb} xdplbd -c {self.lb.config_path} "
                 f"--pin-dir {self.lb.pin_dir} --state-dir {self.lb.state_dir} &")
        with self.spinner("compiling the XDP program and attaching it to eth0 ..."):
            took = self.lb.start()
        for line in self.lb.log_lines():
            if any(k in line for k in ("data plane", "attached", "ready on")):
                self.verbatim(line, style="dim")
        self.say(f"[green]ready[/] after {took:.1f} s")
        self.cmd("xdplb status")
        self.verbatim(self.lb.cli("status", check=False).stdout.rstrip())

    def curl(self) -> None:
        self.step("curl and UDP through the VIPs")
        lab = self.lab
        for url in (f"http://{lab.vip4}/", f"http://[{lab.vip6}]/"):
            self.cmd(f"curl {url}   x6, a new connection each time")
            self.answers([lab.curl(url).strip() for _ in range(6)])
        self.cmd(f"echo ? | socat - UDP:{lab.vip4}:{lab.spec.udp_port}   x6, a new source port "
                 "each time")
        self.answers([lab.udp(lab.vip4).strip() for _ in range(6)])

    def _load(self, title: str, during: Optional[Callable[[], None]] = None) -> List[WrkResult]:
        """wrk keep-alive and new-connection runs side by side; *during* runs mid-way."""
        url = f"http://{self.lab.vip4}/"
        runs = [
            Wrk(self.lab, url, connections=32, duration=self.wrk_seconds),
            Wrk(self.lab, url, connections=8, new_connections=True, duration=self.wrk_seconds),
        ]
        self.cmd(f"wrk -c32 -d{self.wrk_seconds:.0f}s {url}")
        self.cmd(f"wrk -c8 -d{self.wrk_seconds:.0f}s -H 'Connection: close' {url}   "
                 "(at the same time)")
        try:
            with self.spinner(title):
                for w in runs:
                    w.start()
                if during is not None:
                    time.sleep(self.wrk_seconds / 3)
                    during()
                results = [w.wait() for w in runs]
        finally:
            for w in runs:
                w.kill()
        self._show_results(results)
        return results

    def _show_results(self, results: Sequence[WrkResult]) -> None:
        from rich.table import Table

        t = Table(header_style="bold", padding=(0, 1))
        t.add_column("answered by")
        for r in results:
            t.add_column(f"{r.mode} (-c{r.connections})", justify="right")
        for name in sorted({n for r in results for n in r.reals}):
            cells = []
            for r in results:
                n = r.reals.get(name, 0)
                cells.append(f"{n:,} [dim]{n / r.requests if r.requests else 0:4.0%}[/]")
            t.add_row(name, *cells)
        t.add_section()
        t.add_row("[bold]requests", *(f"[bold]{r.requests:,}[/]     " for r in results))
        t.add_row("req/s", *(f"{r.rate:,.0f}     " for r in results))
        t.add_row("failed", *(
            f"[green]{r.failed}[/]     " if r.failed == 0 else f"[red bold]{r.failed}[/]     "
            for r in results))
        self.console.print(t)
        for r in results:
            self.total_requests += r.requests
            self.total_failed += r.failed

    def traffic(self) -> None:
        from rich.table import Table

        self.step("Load: who answered, the LB's counters, and the proof of DSR")
        lab = self.lab
        before_lb = iface_counters(lab.ns_lb)
        before_client = iface_counters(lab.ns_client)
        self._load("driving traffic through the VIP ...")
        lb_d = {k: v - before_lb[k] for k, v in iface_counters(lab.ns_lb).items()}
        cl_d = {k: v - before_client[k] for k, v in iface_counters(lab.ns_client).items()}
        self.say("[dim]a keep-alive connection stays on its real; new ones follow the Maglev "
                 "ring[/dim]")

        self.cmd("xdplb stats --json   (the LB's per-CPU counters, summed)")
        stats = self.lb.stats()
        names = {r.ip4: r.name for r in lab.reals}
        names.update({r.ip6: r.name for r in lab.reals})
        t = Table(header_style="bold", padding=(0, 1))
        t.add_column("VIP / real")
        t.add_column("packets", justify="right")
        t.add_column("bytes", justify="right")
        for v in stats["vips"]:
            t.add_row(f"[bold]{_host(v['vip'])}:{v['port']}/{v['protocol']}",
                      f"{v['packets']:,}", f"{v['bytes']:,}", end_section=False)
            for r in v["reals"]:
                t.add_row(f"  {names.get(r['ip'], '?')}  [dim]{r['ip']}[/]",
                          f"{r['packets']:,}", f"{r['bytes']:,}")
        self.console.print(t)
        self.say("outcomes: " + ", ".join(
            f"{k} [bold]{c['packets']:,}[/]" for k, c in stats["outcomes"].items()
            if c["packets"] and k != "ct_insert"))

        self.console.print()
        self.say("[bold]Direct Server Return[/]: the interface counters over this run")
        t = Table(box=None, padding=(0, 2))
        t.add_column("")
        t.add_column("packets", justify="right")
        t.add_column("bytes", justify="right")
        t.add_column("")
        t.add_row("client sent", f"{cl_d['tx_packets']:,}", f"{cl_d['tx_bytes']:,}",
                  "[dim]requests, to the LB[/]")
        t.add_row("LB sent", f"{lb_d['tx_packets']:,}", f"{lb_d['tx_bytes']:,}",
                  "[dim]the same, XDP_TX to the reals[/]")
        t.add_row("client received", f"{cl_d['rx_packets']:,}", f"{cl_d['rx_bytes']:,}",
                  "[dim]replies, from the reals[/]")
        self.console.print(t, style="")
        self.say("[dim]the LB forwards just what the client sent: no reply passes through "
                 "it[/dim]")

    def live_edit(self) -> None:
        self.step("A live config edit under load: real4 joins")
        cfg = lb_config(self.lab, {"real1": 1, "real2": 1, "real3": 1, "real4": 1})
        seen = len(self.lb.log_lines())
        took: List[float] = []

        def edit() -> None:
            took.append(self.lb.apply(cfg))

        self.cmd(f"$EDITOR {self.lb.config_path}   (+ real4 {self.lab.real_ip4('real4')} in "
                 "every VIP, a third of the way in)")
        results = self._load("wrk running; the config file is edited mid-way ...", during=edit)
        self.verbatim("\n".join(
            line for line in self.lb.log_lines()[seen:] if "+real" in line or "reload" in line),
            style="dim")
        failed = sum(r.failed for r in results)
        verdict = "[green]no request failed[/]" if not failed else f"[red]{failed} failed[/]"
        self.say(f"applied [bold]{took[0] * 1000:.0f} ms[/] after the write; {verdict}")
        self.say("[dim]keep-alive connections stayed on their reals; new ones spread over 4[/dim]")
        url = f"http://{self.lab.vip4}/"
        self.cmd(f"curl {url}   x10")
        self.answers([self.lab.curl(url).strip() for _ in range(10)])

    def finish(self) -> None:
        self.step("Tear down")
        self.cmd("kill -TERM $(pidof xdplbd)")
        self.lb.stop()
        url = f"http://{self.lab.vip4}/"
        self.say("no daemon, and the data plane still forwards:")
        self.cmd(f"curl {url}")
        self.answers([self.lab.curl(url).strip()])
        self.cmd(f"xdplb detach -i eth0 --pin-dir {self.lb.pin_dir}")
        self.verbatim(self.lb.cli("detach", "-i", IFNAME).stdout.strip(), style="dim")
        self.lab.down()
        self.say(f"lab {self.lab.prefix} down: namespaces, processes and files removed")

    def cleanup(self) -> None:
        """Remove everything of the demo; safe at any point, and more than once."""
        try:
            self.lb.close()
        finally:
            self.lab.down()
            remove_pins(self.lb.pin_dir)

    def run(self) -> int:
        t0 = time.monotonic()
        self.console.rule("[bold]xdplb[/]: an XDP L4 load balancer with Direct Server Return")
        rc = 1
        try:
            self.cleanup()  # leftovers of an interrupted earlier run
            self.lab_up()
            self.start_daemon()
            self.curl()
            self.traffic()
            self.live_edit()
            self.finish()
            rc = 0 if self.total_failed == 0 else 1
        except KeyboardInterrupt:
            self.console.print("\n[yellow]interrupted[/]: cleaning up")
            rc = 130
        except Exception as e:
            from rich.markup import escape

            self.console.print(f"\n[red bold]demo failed:[/] {escape(str(e))}")
            self.verbatim(self.lb.log_tail(), style="dim")
        finally:
            # A second Ctrl-C must not cut the clean-up short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.cleanup()
        if rc == 0:
            self.console.print()
            self.console.rule(
                f"[bold]done[/] in {time.monotonic() - t0:.1f} s: {self.total_requests:,} "
                f"requests through the VIP, [green bold]0 failed[/]", align="left")
        elif rc == 1 and self.total_failed:
            self.console.print(f"[red bold]{self.total_failed} requests failed[/]")
        return rc


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplbd.lab.demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default=DEMO_PREFIX, help=f"lab prefix (default {DEMO_PREFIX})")
    ap.add_argument("--pin-dir", default=DEMO_PIN_DIR, help=f"default {DEMO_PIN_DIR}")
    ap.add_argument("--wrk-seconds", type=float, default=3.0, help="each wrk run (default 3)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("xdplb demo: needs root (network namespaces, XDP): sudo make demo", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _sigterm)
    return Demo(args.prefix, args.pin_dir, args.wrk_seconds).run()


if __name__ == "__main__":
    sys.exit(main())
