"""`xdplb top` and `xdplb debug`: a live terminal dashboard of the pinned maps.

render() is a pure function of two snapshots (for rates) and a few facts about
the daemon, so it is unit tested without a terminal or a kernel. The shell
around it (TopSource, run_live) reads the maps through libbpf, never bcc, so it
works whoever started the daemon, and while no daemon runs at all.

Refresh cost: counters are read with batch lookups (a few ms). The conntrack
walk that gives the "flows" column reads the whole table (~100-150 ms for the
default 4M entries), so it is repeated at most as often as keeps it under ~10%
of one CPU (about every 1.5 s at the default); the footer shows its age.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from xdplbd.cli.status import find_attachment
from xdplbd.core import schema
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.snapshot import FlowScan, Snapshot, open_pinned, scan_flows, take
from xdplbd.service import daemonize
from xdplbd.service.health import read_health
from xdplbd.service.statefile import read_state

OUTCOME_LABELS = {
    "tx": "tx", "pass": "pass", "drop": "drop", "no_real": "no real", "ct_hit": "ct hit",
    "ct_miss": "ct miss", "ct_insert": "ct insert", "icmp_routed": "icmp routed",
    "fragment": "fragments", "malformed": "malformed", "other_mac": "other MAC",
}
SCAN_BUDGET = 0.10  # the share of one CPU the conntrack walk may take


@dataclass(frozen=True)
class Meta:
    """What the dashboard shows besides the counters."""

    pin_dir: str
    interface: Optional[str] = None
    mode: Optional[str] = None  # attach mode seen in this netns; None = not attached
    prog_id: Optional[int] = None
    generation: Optional[int] = None
    config_digest: Optional[str] = None
    daemon_pid: Optional[int] = None  # None = no daemon running
    flows_age: Optional[float] = None  # seconds since the conntrack walk
    title: str = "xdplb top"
    log_lines: Tuple[str, ...] = ()  # debug mode: the daemon's latest log lines
    clock: str = ""  # wall-clock time of the snapshot, for the header
    # (VIP text, real IP) -> (health, state, last check result), from health.json
    health: Dict[Tuple[str, str], Tuple[str, str, str]] = field(default_factory=dict)
    failing_open: Tuple[str, ...] = ()


# --- formatting -------------------------------------------------------------------------

def human(value: Optional[float], unit: str = "") -> str:
    """3 significant digits with an SI prefix: 0, 999, 1.23k, 45.6M; "-" if unknown."""
    if value is None:
        return "-"
    v = float(value)
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(v) < 999.5 or prefix == "P":
            if prefix == "":
                return f"{v:.0f}{unit}" if v == int(v) or abs(v) >= 10 else f"{v:.1f}{unit}"
            return f"{v:.3g}{prefix}{unit}"
        v /= 1000
    return f"{v:.3g}{unit}"  # pragma: no cover - unreachable


def _rate(cur: int, old: Optional[int], dt: Optional[float]) -> Optional[float]:
    if old is None or not dt or dt <= 0:
        return None
    # Counters go back to 0 when a real is removed and its slot reused.
    return max(0, cur - old) / dt


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


# --- rendering (pure) --------------------------------------------------------------------

def render(snap: Snapshot, prev: Optional[Snapshot], meta: Meta) -> RenderableType:
    """The whole dashboard for one refresh."""
    dt = snap.monotonic - prev.monotonic if prev is not None else None
    old_vips: Dict[Tuple[str, int], Tuple[int, int]] = {}
    old_reals: Dict[Tuple[str, int, str], Tuple[int, int]] = {}
    if prev is not None:
        for v in prev.vips:
            old_vips[(str(v.key), v.vip_id)] = (v.packets, v.bytes)
            for r in v.reals:
                old_reals[(str(v.key), r.backend_id, r.ip)] = (r.packets, r.bytes)

    parts: List[RenderableType] = [_header(snap, meta)]

    vt = Table(box=box.SQUARE, expand=False, title="VIPs and reals", title_justify="left",
               header_style="bold")
    vt.add_column("VIP / real", no_wrap=True)
    vt.add_column("weight", justify="right")
    vt.add_column("state")
    vt.add_column("health")
    vt.add_column("pkt/s", justify="right")
    vt.add_column("bit/s", justify="right")
    vt.add_column("flows", justify="right")
    vt.add_column("packets", justify="right")
    vt.add_column("bytes", justify="right")
    if not snap.vips:
        vt.add_row(Text("no VIPs configured", style="dim"), "", "", "", "", "", "", "", "")
    for v in snap.vips:
        ov = old_vips.get((str(v.key), v.vip_id))
        pps = _rate(v.packets, ov[0] if ov else None, dt)
        bps = _rate(v.bytes, ov[1] if ov else None, dt)
        active = sum(1 for r in v.reals if r.weight)
        vt.add_row(
            Text(f"{_host(str(v.key.addr))}:{v.key.port}/{v.key.proto}", style="bold cyan"),
            "", f"{active}/{len(v.reals)} up" if v.reals else Text("no reals", style="red"),
            Text("all down: failing open", style="red") if str(v.key) in meta.failing_open
            else "",
            human(pps), human(None if bps is None else bps * 8, "b"), human(v.flows),
            human(v.packets), human(v.bytes, "B"),
        )
        for i, r in enumerate(v.reals):
            orl = old_reals.get((str(v.key), r.backend_id, r.ip))
            rp = _rate(r.packets, orl[0] if orl else None, dt)
            rb = _rate(r.bytes, orl[1] if orl else None, dt)
            branch = "└" if i == len(v.reals) - 1 else "├"
            health, state, last = meta.health.get((str(v.key), r.ip), ("unchecked", r.state, ""))
            hstyle = {"up": "green", "down": "red"}.get(health, "dim")
            vt.add_row(
                f" {branch} {r.ip}", str(r.weight),
                Text(state, style="green" if r.weight else "yellow"),
                Text(health if health != "down" or not last else f"down: {last}"[:48],
                     style=hstyle),
                human(rp), human(None if rb is None else rb * 8, "b"), human(r.flows),
                human(r.packets), human(r.bytes, "B"),
            )
    parts.append(vt)

    old_out = prev.outcomes if prev is not None else {}
    ot = Table(box=box.SQUARE, title="outcomes (all packets the program saw)",
               title_justify="left", header_style="bold")
    ot.add_column("")
    names = [n for n in schema.OUTCOMES if n in snap.outcomes]
    for n in names:
        ot.add_column(OUTCOME_LABELS.get(n, n), justify="right")
    ot.add_row("pkt/s", *[
        human(_rate(snap.outcomes[n][0], old_out[n][0] if n in old_out else None, dt))
        for n in names])
    ot.add_row("packets", *[human(snap.outcomes[n][0]) for n in names])
    parts.append(ot)

    foot = Text(style="dim")
    if snap.conntrack_entries is not None:
        age = f", walked {meta.flows_age:.0f} s ago" if meta.flows_age and \
            meta.flows_age >= 1.5 else ""
        foot.append(f"conntrack {snap.conntrack_entries:,}/{snap.conntrack_max:,} entries"
                    f"{age}; flows = live conntrack entries (TCP: until replaced) · ")
    foot.append(f"read in {snap.read_ms:.1f} ms · q or Ctrl-C quits")
    parts.append(foot)
    if meta.log_lines:
        parts.append(Panel(Text("\n".join(meta.log_lines), no_wrap=True, overflow="ellipsis"),
                           title="daemon log", title_align="left", box=box.SQUARE))
    return Group(*parts)


def _header(snap: Snapshot, meta: Meta) -> RenderableType:
    t = Text()
    t.append(meta.title, style="bold")
    t.append("  ")
    if meta.mode:
        t.append(f"{meta.interface}: {meta.mode} XDP", style="bold green")
        t.append(f" (program {meta.prog_id})")
    else:
        where = f" to {meta.interface}" if meta.interface else ""
        t.append(f"not attached{where} (as seen from this network namespace)",
                 style="bold red")
    t.append("  ·  generation ")
    t.append("?" if meta.generation is None else str(meta.generation), style="bold")
    if meta.config_digest:
        t.append(f" (config {meta.config_digest[:12]})")
    t.append("  ·  ")
    if meta.daemon_pid:
        t.append(f"xdplbd pid {meta.daemon_pid}")
    else:
        t.append("xdplbd not running (fail-static: forwarding goes on)", style="yellow")
    if meta.clock:
        t.append(f"  ·  {meta.clock}", style="dim")
    return t


# --- reading (the shell) ---------------------------------------------------------------

class TopSource:
    """Snapshots and facts from the pins and state.toml; reopens the maps if the
    pins are replaced (detach and restart) while the dashboard runs."""

    def __init__(self, pin_dir: str, state_dir: str, title: str = "xdplb top",
                 flows: bool = True) -> None:
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.title = title
        self.flows = flows
        self.dp: Optional[DataPlane] = None
        self._vips_map_id = 0
        self._scan: Optional[FlowScan] = None
        self.log_lines: Callable[[], Tuple[str, ...]] = lambda: ()

    def close(self) -> None:
        if self.dp is not None:
            self.dp.close()
            self.dp = None

    def _pinned_vips_id(self) -> int:
        try:
            fd = libbpf.obj_get(os.path.join(self.pin_dir, "vips"))
        except libbpf.BpfError:
            return 0
        try:
            return libbpf.map_info(fd).id
        finally:
            os.close(fd)

    def _dataplane(self, state: Dict[str, object]) -> DataPlane:
        pinned = self._pinned_vips_id()
        if self.dp is None or pinned != self._vips_map_id:
            self.close()
            self._scan = None
            self.dp = open_pinned(self.pin_dir, dict(state))
            self._vips_map_id = self.dp.maps["vips"].info.id
        return self.dp

    def _flows(self, dp: DataPlane, interval: float) -> Optional[FlowScan]:
        if not self.flows:
            return None
        s = self._scan
        now = time.monotonic()
        if s is None or now - s.monotonic >= max(interval * 0.9, s.ms / 1000 / SCAN_BUDGET):
            self._scan = scan_flows(dp)
        return self._scan

    def frame(self, interval: float = 1.0) -> Tuple[Snapshot, Meta]:
        state = read_state(self.state_dir)
        dp = self._dataplane(state)
        scan = self._flows(dp, interval)
        snap = take(dp, scan)
        pid = int(state.get("pid", 0) or 0)
        att = find_attachment(self.pin_dir, state.get("interface"))
        meta = Meta(
            pin_dir=self.pin_dir,
            interface=att.interface if att else state.get("interface"),
            mode=att.mode if att else None,
            prog_id=att.prog_id if att else None,
            generation=state.get("generation"),
            config_digest=state.get("config_digest"),
            daemon_pid=pid if daemonize.running(pid) else None,
            flows_age=time.monotonic() - scan.monotonic if scan else None,
            title=self.title,
            log_lines=self.log_lines(),
            clock=time.strftime("%H:%M:%S", time.localtime(snap.wall)),
            **_health(self.state_dir),
        )
        return snap, meta


def _health(state_dir: str) -> Dict[str, Any]:
    """Meta's health fields from health.json (written by the daemon's checker)."""
    doc = read_health(state_dir)
    checks = doc.get("checks", {})
    out: Dict[Tuple[str, str], Tuple[str, str, str]] = {}
    for r in doc.get("reals", []):
        addr = f"[{r['vip']}]" if ":" in str(r["vip"]) else str(r["vip"])
        last = (checks.get(r.get("check", "")) or {}).get("last") or {}
        out[(f"{addr}:{r['port']}/{r['protocol']}", str(r["ip"]))] = (
            str(r.get("health", "unchecked")), str(r.get("state", "")), str(last.get("detail", "")))
    return {"health": out, "failing_open": tuple(doc.get("failing_open", []))}


# --- the live loop -----------------------------------------------------------------------

@contextlib.contextmanager
def _keys(fd: Optional[int]) -> Iterator[None]:
    """cbreak mode on the terminal (single keys, Ctrl-C still a signal), restored after."""
    if fd is None:
        yield
        return
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_live(source: Callable[[float], Tuple[Snapshot, Meta]], interval: float = 1.0,
             console: Optional[Console] = None,
             alive: Optional[Callable[[], Optional[str]]] = None) -> Optional[str]:
    """Refresh every `interval` s until q, Ctrl-C or SIGTERM (returns None), or until
    `alive()` returns a reason to stop (returns it)."""
    console = console or Console()
    fd: Optional[int] = sys.stdin.fileno() if sys.stdin.isatty() else None
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    prev: Optional[Snapshot] = None
    try:
        with _keys(fd), Live(console=console, screen=console.is_terminal,
                             auto_refresh=False, transient=False) as live:
            while True:
                snap, meta = source(interval)
                live.update(render(snap, prev, meta), refresh=True)
                prev = snap
                deadline = time.monotonic() + interval
                while True:
                    if alive is not None:
                        why = alive()
                        if why:
                            return why
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if fd is None:
                        time.sleep(min(left, 0.2))
                        continue
                    ready, _, _ = select.select([fd], [], [], min(left, 0.2))
                    if ready and _quit_key(os.read(fd, 64)):
                        return None
    except KeyboardInterrupt:
        return None
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _quit_key(data: bytes) -> bool:
    return b"q" in data or b"Q" in data


def render_once(source: Callable[[float], Tuple[Snapshot, Meta]], interval: float,
                console: Optional[Console] = None) -> None:
    """Two readings `interval` apart and one frame with their rates (`top --once`)."""
    console = console or Console()
    first, _ = source(interval)
    time.sleep(interval)
    snap, meta = source(interval)
    console.print(render(snap, first, meta))


def tail_lines(path: str, n: int) -> Tuple[str, ...]:
    """The last n lines of a (log) file, cheaply: reads at most its last 16 KB."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ()
    return tuple(data.splitlines()[-n:])
