"""The health checker: runs every check on one asyncio loop in its own thread.

The main loop never waits for it. It reads verdicts (`verdicts(cfg)`, a few
dict lookups), hands over a new config (`configure`, which returns at once;
only checks that changed restart) and the last applied Effective (`publish`).
When a verdict changes, the checker logs one line per (VIP, real), saves its
state and asks the daemon for one apply (`on_change`).

State lives in <state-dir>/health.json: the verdict of every check (so a
restart never flaps a real) and, for `xdplb status`, each real's health,
state, last result and since when.

Where the checks start: a check seen for the first time starts down (a real
added by a reload must pass `rise` checks), except on the very first start of
a daemon (no health.json at all): then every check starts up and a dead real
goes down after `fall` failures, since the first apply already had every real
forwarding (each VIP failing open) and ring rebuilds for 16,000 reals coming up
one by one would keep the main loop busy for minutes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple

from xdplbd.core.effective import Effective, RealId
from xdplbd.core.health import (
    TCP,
    TCP_DSR,
    Check,
    HealthState,
    Result,
    checks_of,
    new_state,
    observe,
    state_from_dict,
    state_to_dict,
    transition_text,
    verdicts,
)
from xdplbd.core.model import Config, IPAddress, Vip
from xdplbd.kernel import rawsock
from xdplbd.service.probes import TcpDsrProber, launch_connect, run_socket_probe

log = logging.getLogger("xdplbd")

STATE_FILE = "health.json"
STATE_VERSION = 1
# health.json is rewritten at once after a transition (it holds the verdicts a
# restart resumes from); last results alone are written at most this often, and
# never more than ~5% of the time it takes to write the file.
REFRESH_S = 2.0
JITTER_SAMPLES = 100_000
SWITCH_INTERVAL_S = 0.0005


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def read_health(state_dir: str) -> Dict[str, Any]:
    """health.json as a dict ({} if absent or unreadable)."""
    try:
        with open(state_path(state_dir)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("version") == STATE_VERSION else {}


class HealthChecker:
    def __init__(self, state_dir: str, ifname: str, on_change: Callable[[str], None]) -> None:
        self.state_dir = state_dir
        self.ifname = ifname
        self.on_change = on_change
        doc = read_health(state_dir)
        # The very first start (no saved state at all): checks start up, as the
        # data plane already forwards to every real (fail-open), and go down after
        # `fall` failures; otherwise thousands of reals coming up one by one would
        # rebuild every VIP's ring again and again. Later, a new check starts down.
        self._optimistic = not doc
        saved = doc.get("checks", {})
        # Verdicts by Check.key. Written by the checker thread only; the main thread
        # reads single keys (atomic dict lookups).
        self.states: Dict[str, HealthState] = {}
        for key, rec in saved.items() if isinstance(saved, dict) else ():
            st = state_from_dict(rec) if isinstance(rec, dict) else None
            if st is not None:
                self.states[key] = st
        self.restored = len(self.states)
        # Checks per Vip object: the config parser hands back the same Vip for an
        # unchanged VIP, so only changed VIPs are walked again.
        self._memo: Dict[int, Tuple[Vip, Tuple[Tuple[IPAddress, Check], ...]]] = {}
        self._memo_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        # Loop-thread state.
        self._users: Dict[Check, List[RealId]] = {}
        self._timers: Dict[Check, asyncio.TimerHandle] = {}
        self._due: Dict[Check, float] = {}
        self._avoid: Set[IPAddress] = set()  # VIP addresses: never a source
        self._sources: Dict[IPAddress, Optional[IPAddress]] = {}
        self._prober: Optional[TcpDsrProber] = None
        self._prober_error = ""
        self._effective: Optional[Effective] = None
        self._dirty = False
        self._save_handle: Optional[asyncio.Handle] = None
        self._last_save = 0.0
        self._save_cost = 0.0
        self._tasks: Set[asyncio.Task[None]] = set()
        # For the benchmark and the exporter: how late each probe left (s), counts.
        self.lateness: Deque[float] = collections.deque(maxlen=JITTER_SAMPLES)
        self.probes_total: Dict[str, int] = {"ok": 0, "failed": 0}

    # -- called from the main thread --------------------------------------------------

    def start(self) -> None:
        # Two busy threads share one GIL: each blocking call (a bpf() syscall of an
        # apply, a socket call of a probe) gives it up and then waits up to a switch
        # interval to get it back. 5 ms (the default) made reloads and probe starts
        # convoy behind each other; 0.5 ms keeps both moving (bench/health.py).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(10)

    def checks_of(self, vip: Vip) -> Tuple[Tuple[IPAddress, Check], ...]:
        with self._memo_lock:
            hit = self._memo.get(id(vip))
            if hit is not None and hit[0] is vip:
                return hit[1]
        checks = checks_of(vip)
        with self._memo_lock:
            self._memo[id(vip)] = (vip, checks)
        return checks

    def verdicts(self, cfg: Config) -> Dict[RealId, str]:
        """up/down for every checked real of cfg (a real never checked yet: down)."""
        pairs = [(v, self.checks_of(v)) for v in cfg.vips]
        return verdicts([p for p in pairs if p[1]], self.states,
                        "up" if self._optimistic else "down")

    def configure(self, cfg: Config) -> None:
        """Run the checks of cfg from now on; returns at once."""
        pairs = [(v, self.checks_of(v)) for v in cfg.vips]
        with self._memo_lock:  # forget VIPs that are gone
            keep = {id(v) for v in cfg.vips}
            for k in [k for k in self._memo if k not in keep]:
                del self._memo[k]
        self._loop.call_soon_threadsafe(self._configure, pairs)

    def publish(self, eff: Effective) -> None:
        """The Effective just applied, for the per-real part of health.json."""
        self._loop.call_soon_threadsafe(self._publish, eff)

    # -- the loop thread ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _shutdown(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for t in self._tasks:
            t.cancel()
        if self._prober is not None:
            self._prober.close()
            self._prober = None
        self._save()
        self._loop.stop()

    def _configure(self, pairs: List[Tuple[Vip, Tuple[Tuple[IPAddress, Check], ...]]]) -> None:
        users: Dict[Check, List[RealId]] = {}
        for vip, checks in pairs:
            for ip, c in checks:
                users.setdefault(c, []).append((vip.key, ip))
        self._avoid = {v.key.addr for v, _ in pairs}
        self._sources.clear()
        old = self._users
        by_probe = {c.probe.key: self.states[c.key] for c in old if c.key in self.states}
        for c in old:
            if c not in users:
                h = self._timers.pop(c, None)
                if h is not None:
                    h.cancel()
                self._due.pop(c, None)
        now = self._loop.time()
        for c in users:
            if c in old:
                continue
            if c.key not in self.states:
                # Only the timing changed: keep the verdict. Else a new real starts down.
                carried = by_probe.get(c.probe.key)
                if carried is None:
                    carried = new_state()
                    if self._optimistic:
                        carried = replace(carried, up=True)
                self.states[c.key] = carried
            due = now + random.uniform(0, min(c.interval, 1.0))
            self._due[c] = due
            self._timers[c] = self._loop.call_at(due, self._fire, c)
        self._users = users
        self._optimistic = False
        live = {c.key for c in users}
        for k in [k for k in self.states if k not in live]:
            del self.states[k]
        if any(c.probe.kind == TCP_DSR for c in users) and self._prober is None:
            self._open_prober()
        self._schedule_save(0.0)

    def _open_prober(self) -> None:
        try:
            self._prober = TcpDsrProber(self.ifname, self._source)
            self._prober.start(self._loop)
            self._prober_error = ""
        except OSError as e:
            # Without CAP_NET_RAW: every DSR check fails, and says why.
            self._prober_error = f"cannot open a raw socket on {self.ifname}: {e.strerror or e}"
            log.error("health checks: %s (the DSR TCP check needs CAP_NET_RAW)",
                      self._prober_error)

    def _source(self, dest: IPAddress) -> Optional[IPAddress]:
        if dest not in self._sources:
            self._sources[dest] = rawsock.source_for(dest, self.ifname, self._avoid)
        return self._sources[dest]

    def _fire(self, c: Check) -> None:
        now = self._loop.time()
        due = self._due.get(c, now)
        self.lateness.append(now - due)
        nxt = due + c.interval
        if nxt < now:  # far behind (a stall): do not fire a burst to catch up
            nxt = now + c.interval
        self._due[c] = nxt
        self._timers[c] = self._loop.call_at(nxt, self._fire, c)
        p = c.probe
        if p.kind == TCP_DSR:
            if self._prober is None:
                self._on_result(c, Result(False, "tcp: " + (self._prober_error or "no prober"),
                                          time.time()))
            else:
                self._prober.launch(p, lambda r: self._on_result(c, r))
            return
        if p.kind == TCP:
            launch_connect(self._loop, p, self._source(p.addr), lambda r: self._on_result(c, r))
            return
        task = self._loop.create_task(self._socket_probe(c))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _socket_probe(self, c: Check) -> None:
        self._on_result(c, await run_socket_probe(c.probe, self._source(c.probe.addr)))

    def _on_result(self, c: Check, r: Result) -> None:
        if c not in self._users:
            return  # removed by a reload while the probe was out
        self.probes_total["ok" if r.ok else "failed"] += 1
        st = self.states.get(c.key) or new_state()
        st, changed = observe(st, r, c.rise, c.fall)
        self.states[c.key] = st
        self._dirty = True
        if not changed:
            return
        for vip, ip in self._users[c]:
            line = transition_text(vip, ip, st, c)
            if st.up:
                log.info("%s", line)
            else:
                log.warning("%s", line)
        self._schedule_save(0.0)
        self.on_change("health")

    def _publish(self, eff: Effective) -> None:
        self._effective = eff
        self._dirty = True
        self._schedule_save(0.0)

    def _schedule_save(self, delay: float) -> None:
        if self._save_handle is not None:
            if delay > 0:
                return
            self._save_handle.cancel()
        # Coalesce: never more than ~5% of the time spent writing the file.
        gap = max(delay, self._last_save + 20 * self._save_cost - time.monotonic())
        self._save_handle = self._loop.call_later(max(0.0, gap), self._save_and_rearm)

    def _save_and_rearm(self) -> None:
        self._save_handle = None
        if self._dirty:
            self._save()
        self._schedule_save(REFRESH_S)

    def _save(self) -> None:
        t0 = time.monotonic()
        self._dirty = False
        try:
            write_health(self.state_dir, self.document())
        except OSError as e:
            log.error("cannot write %s: %s", state_path(self.state_dir), e)
        self._last_save = time.monotonic()
        self._save_cost = self._last_save - t0

    def document(self) -> Dict[str, Any]:
        """health.json: every check's verdict, and each real as last applied."""
        reals: List[Dict[str, Any]] = []
        failing: List[str] = []
        eff = self._effective
        check_of: Dict[RealId, str] = {}
        for c, users in self._users.items():
            for u in users:
                check_of[u] = c.key
        if eff is not None:
            failing = sorted(str(k) for k in eff.failing_open)
            for (vip, ip), rs in eff.reals.items():
                rec: Dict[str, Any] = {"vip": str(vip.addr), "port": vip.port,
                                       "protocol": vip.proto, "ip": str(ip),
                                       "health": rs.health, "state": rs.state}
                if rs.reason:
                    rec["reason"] = rs.reason
                key = check_of.get((vip, ip))
                if key is not None:
                    rec["check"] = key
                reals.append(rec)
        late = sorted(self.lateness)

        def pct(p: float) -> float:
            return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 2) if late else 0.0

        stats = {"probes": dict(self.probes_total), "checks": len(self._users),
                 "lateness_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
                                 "samples": len(late)}}
        return {"version": STATE_VERSION, "written_at": time.time(), "stats": stats,
                "checks": {k: state_to_dict(st) for k, st in self.states.items()},
                "failing_open": failing, "reals": reals}

    def snapshot(self) -> Mapping[str, HealthState]:
        return dict(self.states)


def write_health(state_dir: str, doc: Dict[str, Any]) -> None:
    """Atomically: a reader or a restart sees the old file or the new one."""
    os.makedirs(state_dir, exist_ok=True)
    path = state_path(state_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        # Piecewise, so the main thread gets the GIL between pieces of a big file.
        f.write(f'{{"version": {doc["version"]}, "written_at": {json.dumps(doc["written_at"])}, '
                f'"stats": {json.dumps(doc["stats"])}, '
                f'"failing_open": {json.dumps(doc["failing_open"])},\n"checks": {{')
        first = True
        for k, v in doc["checks"].items():
            f.write(("" if first else ",\n") + json.dumps(k) + ": " + json.dumps(v))
            first = False
        f.write('},\n"reals": [')
        f.write(",\n".join(json.dumps(r) for r in doc["reals"]))
        f.write("]}\n")
    os.replace(tmp, path)
