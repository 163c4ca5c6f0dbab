"""xdplbd: own the data plane; apply lb_conf.json to the live maps, change by change.

The kernel holds the truth: on start and on every reload the daemon reads
the pinned maps back, plans the difference to the config (plan.py, pure) and
writes only that. Exiting, for any reason, leaves the program attached and
the maps pinned, so forwarding never depends on this process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import select
import signal
import stat
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from xdplbd import __version__
from xdplbd.core.config import ConfigError, FieldError, read_config_file
from xdplbd.core.effective import Effective, Health, Neighbour, effective, with_macs
from xdplbd.core.model import Config, IPAddress, LiveState
from xdplbd.core.neighbours import apply_due, mac_conflicts
from xdplbd.core.plan import PlanError, make_plan
from xdplbd.kernel import attach, heap, iface, libbpf, loader
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.service import lblink, logsetup
from xdplbd.service.announcer import Announcer
from xdplbd.service.configwatch import ConfigWatcher
from xdplbd.service.health import HealthChecker
from xdplbd.service.metrics import start_exporter
from xdplbd.service.neighbours import REASON as NEIGHBOUR_REASON
from xdplbd.service.neighbours import NeighbourMonitor
from xdplbd.service.notify import Notifier
from xdplbd.service.pinwatch import POLL_S, PinWatch
from xdplbd.service.statefile import read_state, write_state

log = logging.getLogger("xdplbd")

DEFAULT_CONFIG = "/etc/xdplb/lb_conf.json"
DEFAULT_PIN_DIR = "/sys/fs/bpf/xdplb"
DEFAULT_STATE_DIR = "/run/xdplb"
# One save makes a burst of events; reload once, on the final content. A close
# after writing or a rename into place ends a save: reload almost at once. Any
# other event (a write in progress, a delete before a create) waits to settle.
FINAL_DELAY_S = 0.005
# The trigger of an apply asked for by health or neighbour changes (not a config).
REAPPLY = ("world change",)
SETTLE_DELAY_S = 0.5
# At start, how long to wait for the kernel to resolve the reals without a mac
# before the first apply (in a LAN: well under a millisecond each).
NEIGHBOUR_START_WAIT_S = 1.5
RELOAD_NEIGHBOUR_WAIT_S = 0.5
DEBOUNCE_S = SETTLE_DELAY_S
# Test-only fault injection: sleep after every map operation, so a test can
# kill -9 the daemon in the middle of an apply.
APPLY_DELAY_ENV = "XDPLB_TEST_APPLY_DELAY_MS"

# state.toml lists every real only up to this many in all: a TOML file of 16000
# reals takes ~0.35 s to write and ~0.6 s to read, on every reload and every
# `xdplb status`. Above it, each VIP has its counts only (the maps have the rest).
STATE_REALS_MAX = 1024

EXIT_OK = 0
EXIT_CONFIG = 1  # the config file is invalid or unreadable
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_DATAPLANE = 3  # cannot load, pin, attach or apply


class ConfigRejected(Exception):
    """A valid file this running daemon cannot apply without a restart."""


@dataclass
class Options:
    config: str = DEFAULT_CONFIG
    interface: Optional[str] = None
    xdp_mode: Optional[str] = None
    pin_dir: str = DEFAULT_PIN_DIR
    state_dir: str = DEFAULT_STATE_DIR
    verbose: bool = False
    syslog: bool = False
    log_file: Optional[str] = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xdplbd",
        description="XDP L4 load balancer daemon (Direct Server Return). Runs in the "
        "foreground; SIGHUP reloads the config; SIGTERM/SIGINT exit and leave the data "
        "plane attached and forwarding (`xdplb detach` removes it).",
        epilog="Map sizes (max_vips, max_reals, conntrack_size, ring_size) and udp_timeout are "
        "set in the config's \"tunables\" object; see lb_conf.json(5). Exit status: 0 stopped "
        "by signal, 1 invalid config, 2 usage, 3 data plane error.",
    )
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("-i", "--interface", help="interface to attach to (overrides the config's)")
    p.add_argument("--xdp-mode", choices=["native", "generic", "auto"],
                   help="XDP attach mode (overrides the config's; default auto = native, "
                   "else generic)")
    p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR,
                   help=f"bpffs directory for the pinned program and maps "
                   f"(default {DEFAULT_PIN_DIR})")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help=f"directory for state.toml (default {DEFAULT_STATE_DIR})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--syslog", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--log-file", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"xdplbd {__version__}")
    return p


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_config_file(path: str) -> None:
    """Refuse a config that someone other than root (or us) could have written."""
    try:
        st = os.stat(path)
    except OSError:
        return  # read_config_file names why (missing, a symlink loop, ...)
    if not stat.S_ISREG(st.st_mode):
        return  # read_config_file refuses it, naming what it is
    if st.st_mode & 0o002:
        raise ConfigError(path, [FieldError("", "is world-writable; run: chmod o-w " + path)])
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(path, [FieldError("", f"is owned by uid {st.st_uid}, not root; "
                                            f"run: chown root {path}")])


def read_config(path: str) -> Tuple[Config, str]:
    """Check the file's owner and mode, then parse it; returns the config and its digest."""
    check_config_file(path)
    return read_config_file(path)


def settle_heap() -> None:
    """After a start or a reload: what is alive now (config, live state, memos: ~100k
    objects at 1000 VIPs) lives on; frozen out of the cyclic GC's reach, it costs no
    more full collections (~100 ms each, one every few reloads otherwise), and is
    freed by refcount as usual.

    Collect first: gc.freeze() alone also froze the garbage cycles of the moment
    (an exception's traceback, a thread's leftovers) for good, reload after reload.
    The collection only walks what is not frozen yet, i.e. what this reload made.
    Then the allocator gives back what the reload's temporaries freed (kernel/heap.py)."""
    t0 = time.monotonic()
    found = gc.collect()
    gc.freeze()
    heap.trim()
    log.debug("gc: %d unreachable objects collected in %.1f ms, %d frozen", found,
              (time.monotonic() - t0) * 1000, gc.get_freeze_count())


def status_line(live: LiveState) -> str:
    reals = sum(len(v.backends) for v in live.vips)
    return f"{len(live.vips)} VIPs, {reals} reals"


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.notifier = Notifier()
        self.dp: Optional[DataPlane] = None
        self.cfg: Optional[Config] = None
        self.digest = ""
        self.ifname = ""
        self.ifindex = 0
        self.lb_mac = ""
        self.mode = ""
        self.program: Optional[loader.Program] = None
        self.pinwatch: Optional[PinWatch] = None  # set once the maps are open
        self._pins_polled = 0.0
        self.watcher: Optional[ConfigWatcher] = None
        self._live = LiveState()  # as last read back after an apply
        # The world the file does not describe (core/effective.py): health verdicts
        # by (VIP, real) for a config, and neighbour entries by real IP. Their owners
        # replace these providers and call request_apply() when what they say changes.
        self.health_view: Callable[[Config], Health] = lambda _cfg: {}
        self.health: Optional[HealthChecker] = None
        self.neigh_view: Callable[[], Mapping[IPAddress, Neighbour]] = dict
        self.effective: Optional[Effective] = None  # as last applied
        self.neighbours: Optional[NeighbourMonitor] = None
        self.link: Optional[lblink.LinkOutcome] = None  # as last followed
        self._link_event = False  # set from the neighbour thread
        self._reapply: List[str] = []  # reasons for a pending apply; appended from threads
        self._neigh_burst = (0.0, 0.0)  # (first, latest) neighbour request not applied yet
        self.announcer = Announcer(opts.state_dir)  # the VIP routes BIRD announces
        prev = read_state(opts.state_dir)
        # The generation counts applied configs across restarts: a restart that
        # finds the same file already live is the same generation.
        self.generation = int(prev.get("generation", 0))
        self._prev_digest = str(prev.get("config_digest", ""))
        self.reloads = 0
        self.last_reload: Dict[str, Any] = {}
        # For /metrics (metrics.py): results of the reloads, and who to tell after one.
        self.reload_results: Dict[str, int] = {"ok": 0, "rejected": 0}
        self.on_reload: List[Callable[[bool], None]] = []
        self.started_at = now_iso()
        self.applied_at = ""
        # Set from signal handlers and the watchdog thread; read by the main loop.
        self._stop_signal = 0
        self._hup = False
        self._reload_due = 0.0  # monotonic time a file-change reload is due, 0 = none
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        delay = os.environ.get(APPLY_DELAY_ENV, "")
        self._apply_delay = int(delay) / 1000 if delay.isdigit() else 0.0

    @property
    def pin_dir(self) -> str:
        return self.opts.pin_dir

    # --- start --------------------------------------------------------------

    def start(self) -> int:
        # Handlers first: a SIGTERM or SIGHUP that arrives while starting is queued
        # for the main loop instead of killing us halfway through an apply.
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # Watch before the first read, so a write racing the start is not missed.
        self.watcher = ConfigWatcher(self.opts.config, self._on_file_change)
        self.watcher.start()
        try:
            cfg, digest = read_config(self.opts.config)
        except ConfigError as e:
            self._log_rejected(e)
            self.notifier.status(f"config invalid: {e.errors[0].path or 'file'}: "
                                 f"{e.errors[0].reason}")
            return EXIT_CONFIG
        self.ifname = self.opts.interface or cfg.interface or ""
        if not self.ifname:
            log.error("%s: interface: not set; give it in the config or with -i IF",
                      self.opts.config)
            return EXIT_CONFIG
        mode = self.opts.xdp_mode or cfg.xdp_mode
        # Health first: the first apply already uses the verdicts saved before a restart.
        self.health = HealthChecker(self.opts.state_dir, self.ifname, self.request_apply)
        self.health_view = self.health.verdicts
        if self.health.restored:
            log.info("health: resumed the verdicts of %d checks from %s", self.health.restored,
                     self.opts.state_dir)
        try:
            self.ifindex = iface.ifindex(self.ifname)
            self.lb_mac = iface.mac_address(self.ifname)
            t0 = time.monotonic()
            self.program = loader.load(self.opts.pin_dir, cfg.tunables)
            log.info("%s data plane %s (program %d, tag %s) in %.0f ms",
                     "compiled" if self.program.compiled else "reused pinned",
                     self.program.digest, self.program.info.id, self.program.info.tag,
                     (time.monotonic() - t0) * 1000)
            self.dp = DataPlane(self.opts.pin_dir, cfg.tunables)
            self.pinwatch = PinWatch(self.dp)
            repaired = self.dp.repair_ledger()
            if repaired:
                log.info("counters: %d ledger records brought in line with the backends "
                         "(a removal cut short, or pins from an older build)", repaired)
            self._start_neighbours(cfg)
            self._apply(cfg, digest, "start")
            self._verify(cfg)
            self.mode = attach.ensure_attached(self.ifname, self.ifindex, self.program.fd,
                                               self.program.info.id, mode)
            loader.remove_stale_pins(self.opts.pin_dir, self.program.pin_path)
            self._announce()
        except (iface.InterfaceError, loader.LoadError, attach.AttachError, PlanError,
                OSError) as e:
            log.error("cannot start: %s", e)
            self.notifier.status(f"failed: {e}")
            return EXIT_DATAPLANE
        self._write_state()
        self._configure_health(cfg)
        self.health.start()
        self.notifier.ready(self._status())
        log.info("ready on %s (%s XDP): generation %d, %s", self.ifname, self.mode,
                 self.generation, status_line(self._live))
        settle_heap()
        return EXIT_OK

    def _start_neighbours(self, cfg: Config) -> None:
        """Follow the reals' MACs and the LB's link (service/neighbours.py); wait a
        moment for the reals without a mac, so the first apply has them."""
        assert self.dp is not None
        mon = NeighbourMonitor(self.ifname, self.request_apply, self.request_link_check)
        mon.seed({b.ip: b.mac for v in self.dp.read_live().vips for b in v.backends})
        mon.set_wanted(cfg)
        mon.start()
        self.neighbours = mon
        self.neigh_view = mon.view
        if any(r.mac is None for v in cfg.vips for r in v.reals):
            mon.wait_settled(NEIGHBOUR_START_WAIT_S)

    def _resolve_new_reals(self, cfg: Config) -> None:
        """Give reals new to the config without a mac a moment to resolve, so that this
        reload adds them (else the neighbour event's apply does, a moment later)."""
        if self.neighbours is None:
            return
        view = self.neigh_view()
        if any(r.mac is None and r.ip not in view for v in cfg.vips for r in v.reals):
            self.neighbours.set_wanted(cfg)
            self.neighbours.wait_settled(RELOAD_NEIGHBOUR_WAIT_S)

    def request_link_check(self) -> None:
        """The LB's link changed (thread-safe): the main loop follows it."""
        self._link_event = True
        self._wake()

    def _follow_link(self, trigger: str) -> List[str]:
        """Compare the interface with what we knew; re-attach, take a new LB MAC.
        Returns the lines logged (one per change)."""
        assert self.program is not None and self.dp is not None
        mode_rule = self.opts.xdp_mode or (self.cfg.xdp_mode if self.cfg else "auto")
        was_gone = self.link is not None and self.link.gone
        out = lblink.follow(self.ifname, self.ifindex, self.lb_mac, self.mode, was_gone,
                            self.program.fd, self.program.info.id, mode_rule)
        self.link = out
        if not out.gone:
            self.ifindex, self.mode = out.ifindex, out.mode or self.mode
            if out.mac_changed:
                self.lb_mac = out.mac
                cfg = self.cfg
                self.dp.set_settings(self.lb_mac, cfg.tunables.udp_timeout if cfg else 30,
                                     cfg.extra_macs if cfg else ())
        for line in out.lines:
            (log.warning if out.gone or out.error else log.info)("%s", line)
        if out.lines:
            log.debug("link followed after %s", trigger)
            self._announce()  # a node that cannot forward withdraws; one that can again returns
            self._write_state()
            self.notifier.status(self._status())
        return out.lines

    # --- apply --------------------------------------------------------------

    def _effective(self, cfg: Config) -> Effective:
        neigh = self.neigh_view()
        return effective(cfg, self.health_view(with_macs(cfg, neigh)), neigh, self.effective)

    def _configure_health(self, cfg: Config) -> None:
        """Hand the checker the config with resolved MACs (returns at once; only checks
        that changed restart, so calling it after every neighbour change is cheap)."""
        if self.health is not None:
            self.health.configure(with_macs(cfg, self.neigh_view()))

    def _log_fail_open(self, old: Optional[Effective], new: Effective) -> None:
        before = old.failing_open if old is not None else frozenset()
        for key in sorted(new.failing_open - before, key=str):
            log.warning("vip %s: all reals down: failing open (every weighted real takes new "
                        "flows)", key)
        for key in sorted(before - new.failing_open, key=str):
            if any(v.key == key for v in new.config.vips):
                log.info("vip %s: a real is up again: no longer failing open", key)

    def _apply(self, cfg: Config, digest: str, trigger: str) -> int:
        assert self.dp is not None
        if self.pinwatch is not None:
            self.pinwatch.check()  # raises PinsChanged (a PlanError): nothing is written
        t0 = time.monotonic()
        live = self.dp.read_live()
        t1 = time.monotonic()
        eff = self._effective(cfg)
        plan = make_plan(live, eff.config, count_moved=False)
        t2 = time.monotonic()

        # A neighbour change logged its own line (service/neighbours.py).
        level = logging.DEBUG if trigger == NEIGHBOUR_REASON else logging.INFO

        def on_op(op: object) -> None:
            note = getattr(op, "note", "")
            if note:
                log.log(level, "%s", note)
            if self._apply_delay:
                time.sleep(self._apply_delay)

        self.dp.apply(plan.ops, on_op)
        settings_changed = self.dp.set_settings(self.lb_mac, cfg.tunables.udp_timeout,
                                                 cfg.extra_macs)
        known = self.digest or self._prev_digest
        if digest != known or ((plan.ops or settings_changed) and trigger not in REAPPLY
                                and trigger != NEIGHBOUR_REASON):
            self.generation += 1  # counts configs applied, not health or MAC changes
        self._log_fail_open(self.effective, eff)
        self.cfg, self.digest, self.effective = cfg, digest, eff
        if self.health is not None:
            self.health.publish(eff)
        if self.neighbours is not None:
            self.neighbours.set_wanted(cfg)
        self.applied_at = now_iso()
        log.debug("%s: %d map operations (read %.1f ms, plan %.1f ms, apply %.1f ms)", trigger,
                  len(plan.ops), (t1 - t0) * 1000, (t2 - t1) * 1000,
                  (time.monotonic() - t2) * 1000)
        return len(plan.ops)

    def _verify(self, cfg: Config) -> None:
        """Read the maps back: they must now hold the config (an empty plan).

        This is also the live state that state.toml and STATUS= report; and it
        leaves the plan's per-object texts computed for the next reload.
        """
        assert self.dp is not None
        self._live = self.dp.read_live()
        want = self.effective.config if self.effective is not None else cfg
        try:
            left = len(make_plan(self._live, want, count_moved=False).ops)
        except PlanError as e:
            log.warning("the maps read back after the apply: %s", e)
            return
        if left:
            log.warning("the maps differ from the config right after applying it (%d map "
                        "operations short; is something else writing to %s?); the next "
                        "reload retries", left, self.opts.pin_dir)

    def reload(self, trigger: str) -> bool:
        """One reload; True if applied, False if rejected (the old config stays live)."""
        ok = self._reload(trigger)
        self.reload_results["ok" if ok else "rejected"] += 1
        for hook in self.on_reload:
            hook(ok)
        settle_heap()
        return ok

    def _reload(self, trigger: str) -> bool:
        """One reload: validate everything, then apply; on any error change nothing."""
        assert self.cfg is not None
        self.reloads += 1
        self.notifier.reloading()
        t0 = time.monotonic()
        try:
            cfg, digest = read_config(self.opts.config)
            log.debug("%s: read and validated in %.1f ms", trigger,
                      (time.monotonic() - t0) * 1000)
            self._check_restart_only(cfg)
            self._resolve_new_reals(cfg)
            n = self._apply(cfg, digest, trigger)
        except ConfigError as e:
            self._log_rejected(e)
            self._reject(trigger, e, f"{e.errors[0].path or 'file'}: {e.errors[0].reason}")
            return False
        except (ConfigRejected, PlanError) as e:
            log.error("%s: rejected, previous config stays live: %s", self.opts.config, e)
            self._reject(trigger, e, str(e))
            return False
        ms = (time.monotonic() - t0) * 1000
        self._configure_health(cfg)
        self._verify(cfg)
        # The attachment is live state too: never "no changes" while it is missing.
        relinked = self._follow_link(trigger)
        self._announce()
        self.last_reload = {"at": now_iso(), "trigger": trigger, "result": "ok",
                            "operations": n, "duration_ms": round(ms, 1)}
        if relinked:
            self.last_reload["link"] = "; ".join(relinked)
        self._write_state()
        what = "applied" if n else ("link followed" if relinked else "no changes")
        log.info("reload (%s): %s, generation %d, %d map operations in %.0f ms", trigger,
                 what, self.generation, n, ms)
        self.notifier.ready(self._status())
        return True

    @property
    def announcement(self) -> Dict[str, Any]:
        """What this node announces and why (for metrics; {} when not configured)."""
        return self.announcer.status()

    def attached(self) -> bool:
        """Our program is the interface's XDP program now (the kernel holds the truth)."""
        if not self.ifindex or self.program is None:
            return False
        try:
            return libbpf.xdp_query(self.ifindex).prog_id == self.program.info.id
        except libbpf.BpfError:
            return False

    def _announce(self) -> None:
        if self.cfg is not None and self.effective is not None:
            self.announcer.update(self.cfg.bird, self.effective, self.attached())

    def request_apply(self, reason: str) -> None:
        """Ask the main loop for one apply of the live config against the current
        health and neighbour views (thread-safe; several requests make one apply).
        Neighbour changes wait for the end of their burst (core/neighbours.py apply_due)."""
        if reason == NEIGHBOUR_REASON:
            now = time.monotonic()
            self._neigh_burst = (self._neigh_burst[0] or now, now)
        self._reapply.append(reason)
        self._wake()

    def _reapply_due(self) -> float:
        """When the pending apply is due (monotonic); 0.0 when none is pending."""
        if not self._reapply:
            return 0.0
        first, latest = self._neigh_burst
        if not first or any(r != NEIGHBOUR_REASON for r in self._reapply):
            return time.monotonic()
        return apply_due(first, latest)

    def _do_reapply(self) -> None:
        reasons, self._reapply = self._reapply, []
        self._neigh_burst = (0.0, 0.0)
        if not reasons or self.cfg is None:
            return
        only_neigh = all(r == NEIGHBOUR_REASON for r in reasons)
        if NEIGHBOUR_REASON in reasons:
            self._configure_health(self.cfg)  # a DSR probe follows its real's MAC
        try:
            n = self._apply(self.cfg, self.digest, NEIGHBOUR_REASON if only_neigh else REAPPLY[0])
        except PlanError as e:
            log.error("apply after %s failed; the maps keep their state: %s",
                      ", ".join(sorted(set(reasons))), e)
            return
        self._verify(self.cfg)
        self._announce()
        self._write_state()
        if n:
            log.debug("applied %d map operations after %s", n, ", ".join(sorted(set(reasons))))
        self.notifier.status(self._status())

    def _reject(self, trigger: str, error: Exception, why: str) -> None:
        """A rejected reload: the live config stays. The reload still re-announces, since
        what it was asked for may be outside the file (`xdplb maintenance` signals one)."""
        self.last_reload = {"at": now_iso(), "trigger": trigger, "result": "rejected",
                            "error": str(error)}
        self._announce()
        self._write_state()
        self.notifier.ready(f"config rejected, generation {self.generation} still live: {why}")

    def _check_restart_only(self, cfg: Config) -> None:
        """Settings baked into the program or the maps cannot change under it."""
        assert self.cfg is not None
        if cfg.tunables != self.cfg.tunables:
            raise ConfigRejected(
                "tunables changed; map sizes are fixed while the maps exist: restore them, "
                "or run `xdplb detach` and restart xdplbd (this drops traffic)")
        new_if = self.opts.interface or cfg.interface
        if new_if and new_if != self.ifname:
            raise ConfigRejected(f"interface changed from {self.ifname} to {new_if}; "
                                 "restart xdplbd to move it")

    def _log_rejected(self, e: ConfigError) -> None:
        log.error("config rejected, nothing changed (%d problem%s):", len(e.errors),
                  "" if len(e.errors) == 1 else "s")
        for line in str(e).splitlines():
            log.error("  %s", line)

    # --- state -------------------------------------------------------------

    def _status(self) -> str:
        """STATUS= text, from the live state that _write_state last read."""
        text = f"generation {self.generation}: {status_line(self._live)} on {self.ifname}"
        eff = self.effective
        if eff is not None:
            down = sum(1 for ve in eff.vips.values() for _, st in ve.statuses
                       if st.health == "down")
            if down:
                text += f"; {down} real{'s' if down != 1 else ''} health-down"
            n = len(eff.failing_open)
            if n:
                text += f"; {n} VIP{'s' if n != 1 else ''} failing open (all reals down)"
        problem = lblink.problem(self.link, self.ifname)
        return f"{problem}; {text}" if problem else text

    def _write_state(self) -> None:
        """state.toml, from the live state that the last apply read back (_verify)."""
        assert self.dp is not None and self.program is not None
        live = self._live
        with_reals = sum(len(v.backends) for v in live.vips) <= STATE_REALS_MAX
        vips = []
        for v in live.vips:
            active = sum(1 for b in v.backends if b.weight)
            vip: Dict[str, Any] = {
                "vip": str(v.key.addr), "port": v.key.port, "protocol": v.key.proto,
                "vip_id": v.id, "ring_digest": f"{v.ring_digest:016x}",
                "active": active, "draining": len(v.backends) - active,
            }
            eff = self.effective
            if eff is not None:
                vip["failing_open"] = v.key in eff.failing_open
            if with_reals:
                vip["reals"] = []
                for b in v.backends:
                    real: Dict[str, Any] = {"ip": str(b.ip), "mac": b.mac, "weight": b.weight,
                                            "backend_id": b.id,
                                            "state": "active" if b.weight else "draining"}
                    st = eff.reals.get((v.key, b.ip)) if eff is not None else None
                    if st is not None:
                        real.update(health=st.health, state=st.state, mac_source=st.mac_source)
                        if st.reason:
                            real["reason"] = st.reason
                    vip["reals"].append(real)
            vips.append(vip)
        data: Dict[str, Any] = {
            "pid": os.getpid(),
            "version": __version__,
            "generation": self.generation,
            "config": os.path.abspath(self.opts.config),
            "config_digest": self.digest,
            "applied_at": self.applied_at,
            "started_at": self.started_at,
            "interface": self.ifname,
            "ifindex": self.ifindex,
            "lb_mac": self.lb_mac,
            "xdp_mode": self.mode,
            "prog_id": self.program.info.id,
            "prog_tag": self.program.info.tag,
            "source_digest": self.program.digest,
            "pin_dir": self.opts.pin_dir,
            "tunables": dataclasses.asdict(self.cfg.tunables) if self.cfg else {},
            "reloads": self.reloads,
            "vips": vips,
        }
        if self.last_reload:
            data["last_reload"] = self.last_reload
        announce = self.announcer.status()
        if announce:
            data["announce"] = announce
        data.update(self._world_state())
        write_state(self.opts.state_dir, data)

    def _world_state(self) -> Dict[str, Any]:
        """state.toml's view of the link and the neighbour table, for `xdplb status`."""
        out: Dict[str, Any] = {}
        problem = lblink.problem(self.link, self.ifname)
        if problem:
            out["interface_problem"] = problem
        eff = self.effective
        if eff is not None:
            out["unresolved"] = [
                {"vip": str(key.addr), "port": key.port, "protocol": key.proto, "ip": str(ip),
                 "mac": st.mac or "", "reason": st.reason}
                for key, ve in eff.vips.items() for ip, st in ve.statuses
                if st.mac_source == "unresolved"]
        if self.cfg is not None:
            out["mac_conflicts"] = [
                {"ip": str(ip), "config_mac": cm, "neighbour_mac": nm}
                for ip, (cm, nm) in mac_conflicts(self.cfg, self.neigh_view()).items()]
        if self.neighbours is not None and self.neighbours.error:
            out["neighbour_error"] = self.neighbours.error
        return out

    # --- main loop -----------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop_signal = signum
        self._wake()

    def _on_file_change(self, final: bool) -> None:
        # The latest event decides: a write that starts after a close postpones.
        self._reload_due = time.monotonic() + (FINAL_DELAY_S if final else SETTLE_DELAY_S)
        self._wake()

    def serve(self) -> int:
        wd = self.notifier.watchdog_interval
        next_ping = time.monotonic()
        try:
            while not self._stop_signal:
                now = time.monotonic()
                if wd is not None and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + wd
                timeout = 1.0 if wd is None else max(0.0, next_ping - now)
                for due in (self._reload_due, self.announcer.retry_due, self._reapply_due()):
                    if due:
                        timeout = min(timeout, max(0.0, due - now))
                select.select([self._wake_r], [], [], timeout)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                if self._stop_signal:
                    break
                if self.pinwatch is not None and time.monotonic() - self._pins_polled > POLL_S:
                    self._pins_polled = time.monotonic()
                    self.pinwatch.poll()
                if self._link_event:
                    self._link_event = False
                    self._follow_link("link event")
                reapply = self._reapply_due()
                if reapply and time.monotonic() >= reapply:
                    self._do_reapply()
                if self.announcer.retry_due:
                    self.announcer.retry()
                if self._hup:
                    self._hup = False
                    self._reload_due = 0.0  # this reload reads the file anyway
                    self.reload("SIGHUP")
                    continue
                due = self._reload_due
                if due and time.monotonic() >= due:
                    self._reload_due = 0.0
                    self.reload("file change")
        finally:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
        self.notifier.stopping()
        log.info("stopping on %s; the data plane stays attached and keeps forwarding",
                 signal.Signals(self._stop_signal).name)
        return EXIT_OK

    def close(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.neighbours is not None:
            self.neighbours.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.dp is not None:
            self.dp.close()
        if self.program is not None:
            os.close(self.program.fd)


def run(opts: Options) -> int:
    d = Daemon(opts)
    exporter = None
    try:
        code = d.start()
        if code != EXIT_OK:
            return code
        # Returns at once; listens (in a thread) only if the config has metrics.listen.
        exporter = start_exporter(d)
        d.on_reload.append(exporter.sync)
        return d.serve()
    finally:
        if exporter is not None:
            exporter.stop()
        d.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    heap.limit_arenas()  # before any thread starts
    heap.big_blocks_apart()
    opts = Options(config=args.config, interface=args.interface, xdp_mode=args.xdp_mode,
                   pin_dir=args.pin_dir, state_dir=args.state_dir, verbose=args.verbose,
                   syslog=args.syslog, log_file=args.log_file)
    logsetup.setup(verbose=opts.verbose, syslog=opts.syslog, log_file=opts.log_file)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
