"""Health checks, the daemon's side: its copy of the verdicts, and the checker process.

The probes run in a child process (service/healthd.py, `python -m
xdplbd.service.healthd`): thousands of probes a second in a thread of the
daemon fought every reload for the GIL (reload p99 ~300 ms to 1.5 s, RSS
~220 MB; bench/health.py). This module is the daemon's narrow interface to it,
and the main loop never waits for it:

* `verdicts(cfg)`: up/down of every checked real, per VIP, from the daemon's own
  copy of the verdicts; a VIP's mapping stays the same object until its Vip or
  a verdict changes, so effective() keeps that VIP's part;
* `configure(cfg)`: only the VIPs whose object changed are sent (the config
  parser hands back the same Vip for an unchanged VIP), so only the checks that
  changed restart; returns at once;
* `publish(eff)`: the reals' state as last applied, for health.json: only the
  VIPs whose part is not the object sent last time, and of those the reals that
  changed;
* `on_change`: called (from the supervisor thread) when a verdict changes.

The checker sends verdict transitions and log lines; it writes health.json
(every check's verdict, last results, each real as applied) so that a restart
never flaps a real. A supervisor thread starts it, reads it, and restarts it
if it dies (logged; the verdicts keep their last state meanwhile, and the new
checker starts from them). It dies with the daemon (PR_SET_PDEATHSIG, and end
of file on its socket).

Where the checks start: a check seen for the first time starts down (a real
added by a reload must pass `rise` checks), except on the very first start of
a daemon (no health.json at all): then every check starts up and a dead real
goes down after `fall` failures, since the first apply already had every real
forwarding (each VIP failing open) and ring rebuilds for 16,000 reals coming up
one by one would keep the main loop busy for minutes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from xdplbd.core.effective import NO_HEALTH, Effective, Health, VipEffective, VipHealth
from xdplbd.core.health import (
    Check,
    HealthState,
    carry,
    checks_of,
    state_from_dict,
    state_to_dict,
    vip_verdicts,
)
from xdplbd.core.healthwire import STATE_VERSION, state_path, vip_checks_to_wire, vipkey_to_wire
from xdplbd.core.model import Config, IPAddress, Vip, VipKey

log = logging.getLogger("xdplbd")

# A checker that dies is restarted after this long, doubling up to the max while
# it keeps dying within RESTART_MAX_S of its start.
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
STOP_WAIT_S = 10.0
CHILD_MODULE = "xdplbd.service.healthd"
# Not for the child: it must not speak to systemd in the daemon's name.
CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                  "LISTEN_PID")

VipChecks = Tuple[Tuple[IPAddress, Check], ...]


def read_health(state_dir: str) -> Dict[str, Any]:
    """health.json as a dict ({} if absent or unreadable)."""
    try:
        with open(state_path(state_dir)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("version") == STATE_VERSION else {}


def _line(msg: Dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class _Child:
    """One checker process: its socket, and a writer thread so that the main loop
    never blocks on a full socket buffer."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc, self.sock = proc, sock
        self.out: queue.Queue[Optional[bytes]] = queue.Queue()
        self.writer = threading.Thread(target=self._write, name="health-tx", daemon=True)
        self.writer.start()

    def send(self, msg: Dict[str, Any]) -> None:
        self.out.put(_line(msg))

    def _write(self) -> None:
        while True:
            data = self.out.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                return  # it died: the supervisor sees end of file

    def close(self) -> None:
        self.out.put(None)
        self.writer.join(5)
        self.sock.close()


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
        # Verdicts by Check.key: the daemon's copy, which the applies use. Written
        # under _lock (main thread: configure; supervisor: transitions); read with
        # single dict lookups.
        self.states: Dict[str, HealthState] = {}
        for key, rec in saved.items() if isinstance(saved, dict) else ():
            st = state_from_dict(rec) if isinstance(rec, dict) else None
            if st is not None:
                self.states[key] = st
        self.restored = len(self.states)
        # Checks per Vip object: the config parser hands back the same Vip for an
        # unchanged VIP, so only changed VIPs are walked again.
        self._memo: Dict[int, Tuple[Vip, VipChecks]] = {}
        self._memo_lock = threading.Lock()
        # Bumped whenever a verdict may have changed: the per-VIP verdicts are kept
        # (VipKey -> (Vip, version, verdicts)) until then.
        self._version = 0
        self._verdict_memo: Dict[VipKey, Tuple[Vip, int, VipHealth]] = {}
        self._intern: Dict[Check, Check] = {}
        self._lock = threading.Lock()
        self._vips: Dict[VipKey, Tuple[Vip, VipChecks]] = {}  # as last configured
        self._uses: Dict[str, int] = {}  # check key -> (VIP, real) pairs using it
        self._configured = False
        self._effective: Optional[Effective] = None
        # What the running child has been told (reset when one starts).
        self._child: Optional[_Child] = None
        self._sent_vips: Dict[VipKey, Vip] = {}
        self._sent_parts: Dict[VipKey, VipEffective] = {}
        self._sent_failing: Optional[List[str]] = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="health", daemon=True)
        self.restarts = 0
        self.pid = 0  # the checker's, while one runs

    # -- called from the main thread --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            child = self._child
            if child is not None:
                child.send({"op": "stop"})
        if child is not None:
            try:
                child.proc.wait(STOP_WAIT_S)  # it saves health.json first
            except subprocess.TimeoutExpired:
                child.proc.kill()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)

    def checks_of(self, vip: Vip) -> VipChecks:
        with self._memo_lock:
            hit = self._memo.get(id(vip))
            if hit is not None and hit[0] is vip:
                return hit[1]
        with self._memo_lock:
            # One object per distinct check, however many VIPs share it (a Check and
            # its Probe are ~1 KB; 16,000 pairs over 4000 endpoints in the benchmark).
            checks = tuple((ip, self._intern.setdefault(c, c)) for ip, c in checks_of(vip))
            self._memo[id(vip)] = (vip, checks)
        return checks

    def verdicts(self, cfg: Config) -> Health:
        """up/down for every checked real of cfg, per VIP (a real never checked yet:
        down). A VIP's mapping stays the same object while its Vip and its verdicts
        are unchanged, so effective() reuses that VIP's part: a reload walks only the
        VIPs it changed, and a transition only rebuilds the mappings here."""
        version = self._version  # read first: a transition meanwhile bumps it again
        unknown = "up" if self._optimistic else "down"
        memo = self._verdict_memo
        out: Dict[VipKey, VipHealth] = {}
        for v in cfg.vips:
            hit = memo.get(v.key)
            if hit is not None and hit[0] is v and hit[1] == version:
                if hit[2]:
                    out[v.key] = hit[2]
                continue
            checks = self.checks_of(v)
            now: VipHealth = vip_verdicts(checks, self.states, unknown) if checks else NO_HEALTH
            if hit is not None and hit[2] == now:
                now = hit[2]  # same verdicts: the same object
            memo[v.key] = (v, version, now)
            if now:
                out[v.key] = now
        if len(memo) > len(cfg.vips) + 64:
            for key in [k for k in memo if k not in out]:
                memo.pop(key, None)
        return out

    def configure(self, cfg: Config) -> None:
        """Run the checks of cfg from now on; returns at once. Only VIPs whose object
        changed are looked at, here and in the checker."""
        with self._memo_lock:  # forget VIPs that are gone
            keep = {id(v) for v in cfg.vips}
            for k in [k for k in self._memo if k not in keep]:
                del self._memo[k]
        with self._lock:
            gone_checks: List[Check] = []
            new_checks: List[Check] = []
            seen: Set[VipKey] = set()
            for v in cfg.vips:
                seen.add(v.key)
                prev = self._vips.get(v.key)
                if prev is not None and prev[0] is v:
                    continue
                checks = self.checks_of(v)
                if prev is not None:
                    gone_checks.extend(self._unuse(prev[1]))
                new_checks.extend(self._use(checks))
                self._vips[v.key] = (v, checks)
            for key in [k for k in self._vips if k not in seen]:
                gone_checks.extend(self._unuse(self._vips.pop(key)[1]))
            gone = [c for c in gone_checks if c.key not in self._uses]
            added = {c.key: c for c in new_checks if c.key in self._uses}
            if gone or added:
                states = {k: st for k, st in self.states.items() if k in self._uses}
                states.update(carry(gone, added.values(), self.states, self._optimistic))
                self.states = states
            if gone or added or self._optimistic:
                self._version += 1
            self._optimistic = False
            self._configured = True
            if self._child is not None:
                self._send_vips(self._child)

    def publish(self, eff: Effective) -> None:
        """The Effective just applied, for the per-real part of health.json."""
        with self._lock:
            self._effective = eff
            if self._child is not None:
                self._send_reals(self._child, eff)

    def results(self) -> Tuple[Mapping[str, HealthState], Dict[str, int]]:
        """Every check's state with its last result, and probe counts, as of the
        checker's last write of health.json (at most ~2 s old); the verdicts are the
        daemon's own, current ones."""
        doc = read_health(self.state_dir)
        out: Dict[str, HealthState] = {}
        saved = doc.get("checks", {})
        for key, st in self.states.items():
            rec = saved.get(key)
            last = state_from_dict(rec) if isinstance(rec, dict) else None
            out[key] = st if last is None or last.up != st.up else last
        probes = doc.get("stats", {}).get("probes", {})
        return out, {"ok": int(probes.get("ok", 0)), "failed": int(probes.get("failed", 0))}

    def snapshot(self) -> Mapping[str, HealthState]:
        return self.results()[0]

    # -- what the child is told (under _lock) -----------------------------------------

    def _use(self, checks: VipChecks) -> List[Check]:
        out = []
        for _ip, c in checks:
            n = self._uses.get(c.key, 0)
            self._uses[c.key] = n + 1
            if not n:
                out.append(c)
        return out

    def _unuse(self, checks: VipChecks) -> List[Check]:
        out = []
        for _ip, c in checks:
            n = self._uses[c.key] - 1
            if n:
                self._uses[c.key] = n
            else:
                del self._uses[c.key]
                with self._memo_lock:
                    self._intern.pop(c, None)
                out.append(c)
        return out

    def _send_vips(self, child: _Child) -> None:
        sets, dels = [], []
        for key, (v, checks) in self._vips.items():
            if self._sent_vips.get(key) is not v:
                sets.append(vip_checks_to_wire(key, checks))
                self._sent_vips[key] = v
        for key in [k for k in self._sent_vips if k not in self._vips]:
            del self._sent_vips[key]
            dels.append(vipkey_to_wire(key))
        if sets or dels:
            child.send({"op": "vips", "set": sets, "del": dels})

    def _send_reals(self, child: _Child, eff: Effective) -> None:
        """What changed since the last message, VIP by VIP: a VIP whose part is the
        same object as last sent is skipped without a look at its reals."""
        sets: List[List[Any]] = []
        dels: List[List[Any]] = []
        sent = self._sent_parts
        for key, ve in eff.vips.items():
            old = sent.get(key)
            if old is ve:
                continue
            was = dict(old.statuses) if old is not None else {}
            wk = vipkey_to_wire(key)
            for ip, rs in ve.statuses:
                o = was.pop(ip, None)
                if o is None or (o.health, o.state, o.reason) != (rs.health, rs.state, rs.reason):
                    sets.append([wk, str(ip), rs.health, rs.state, rs.reason])
            dels.extend([wk, str(ip)] for ip in was)
            sent[key] = ve
        for key in [k for k in sent if k not in eff.vips]:
            wk = vipkey_to_wire(key)
            dels.extend([wk, str(ip)] for ip, _ in sent.pop(key).statuses)
        failing = sorted(str(k) for k in eff.failing_open)
        if sets or dels or failing != self._sent_failing:
            self._sent_failing = failing
            child.send({"op": "reals", "set": sets, "del": dels, "failing_open": failing})

    # -- the supervisor thread ----------------------------------------------------------

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
        argv = [sys.executable, "-m", CHILD_MODULE, "--fd", str(theirs.fileno()),
                "--parent", str(os.getpid()), "--interface", self.ifname,
                "--state-dir", self.state_dir]
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), env=env,
                                    stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        child = _Child(proc, ours)
        with self._lock:
            # A new checker starts from the daemon's verdicts, then gets everything.
            child.send({"op": "init", "optimistic": not self._configured and self._optimistic,
                        "states": {k: state_to_dict(st) for k, st in self.states.items()}})
            self._sent_vips, self._sent_parts, self._sent_failing = {}, {}, None
            self._send_vips(child)
            if self._effective is not None:
                self._send_reals(child, self._effective)
            self._child = child
            self.pid = proc.pid
        return child

    def _supervise(self) -> None:
        delay = RESTART_MIN_S
        while not self._stopping.is_set():
            t0 = time.monotonic()
            try:
                child = self._spawn()
            except OSError as e:
                log.error("health checks: cannot start the checker: %s; retrying in %.0f s",
                          e, delay)
            else:
                self._read(child)
                with self._lock:
                    self._child = None
                    self.pid = 0
                child.close()
                try:
                    code = child.proc.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    code = child.proc.wait()
                if self._stopping.is_set():
                    return
                self.restarts += 1
                if time.monotonic() - t0 > RESTART_MAX_S:
                    delay = RESTART_MIN_S
                log.error("health checks: the checker (pid %d) exited with %s; restarting it "
                          "in %.1f s (verdicts keep their last state meanwhile)", child.proc.pid,
                          f"signal {-code}" if code < 0 else f"status {code}", delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_S)

    def _read(self, child: _Child) -> None:
        buf = b""
        while True:
            try:
                data = child.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line:
                    self._handle(json.loads(line))

    def _handle(self, msg: Dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "log":
            log.log(int(msg["level"]), "%s", msg["msg"])
        elif op == "verdicts":
            changed = False
            with self._lock:
                states = self.states
                for key, rec in msg["states"].items():
                    st = state_from_dict(rec)
                    if st is None or key not in self._uses:
                        continue  # a check a later configure dropped
                    old = states.get(key)
                    states[key] = st
                    # A key without a state read as down (verdicts(), after the first
                    # configure).
                    changed = changed or (old.up if old is not None else False) != st.up
                if changed:
                    self._version += 1
            if changed:
                self.on_change("health")
