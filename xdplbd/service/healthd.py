"""The health checker process: every probe of the daemon's checks, on one asyncio loop.

`python -m xdplbd.service.healthd --fd N --parent PID --interface IF --state-dir D`,
started by the daemon (service/health.py), never by hand. It runs in its own
process so that thousands of probes a second and a reload never wait for each
other's GIL (one thread did: reload p99 ~300 ms, up to 1.5 s on a loaded
machine; bench/health.py).

It speaks JSON lines on the socket N (core/healthwire.py encodes the values):

  daemon -> checker
    {"op": "init", "optimistic": bool, "states": {check key: state}}   first, once
    {"op": "vips", "set": [[vipkey, [[ip, check], ...]], ...], "del": [vipkey, ...]}
    {"op": "reals", "set": [[vipkey, ip, health, state, reason], ...],
     "del": [[vipkey, ip], ...], "failing_open": [text, ...]}
    {"op": "stop"}
  checker -> daemon
    {"op": "verdicts", "states": {check key: state}}   transitions, and the states of
                                                       checks a "vips" message added
    {"op": "log", "level": n, "msg": text}             the daemon logs it (one log path)

The daemon owns the verdicts it applies; this process owns the probing and
<state-dir>/health.json (verdicts, last results, each real as last applied).
It exits, saving health.json first, on "stop", on end of file (the daemon is
gone) and on SIGTERM (PR_SET_PDEATHSIG sends it if the daemon dies first).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The checker speaks no TLS, but asyncio imports ssl if it can: libssl and the
    # ssl module's enums, ~1.2 MB of RSS for nothing. asyncio takes ssl as optional.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio
import contextlib
import contextvars
import ctypes
import ipaddress
import itertools
import json
import logging
import os
import random
import signal
import socket
import time
from array import array
from dataclasses import replace
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from xdplbd.core.health import (
    TCP,
    TCP_DSR,
    Check,
    HealthState,
    Result,
    carry,
    new_state,
    observe,
    state_from_dict,
    state_to_dict,
    transition_text,
)
from xdplbd.core.healthwire import STATE_VERSION, check_from_wire, state_path, vipkey_from_wire
from xdplbd.core.model import IPAddress
from xdplbd.kernel import heap, rawsock
from xdplbd.service.probes import TcpDsrProber, launch_connect, run_socket_probe

log = logging.getLogger("xdplbd")

# health.json is rewritten at once after a transition (it holds the verdicts a
# restart resumes from); last results alone are written at most this often, and
# never more than ~5% of the time it takes to write the file.
REFRESH_S = 2.0
JITTER_SAMPLES = 100_000
SLICE = 256  # health.json records rendered between two turns of the loop
PR_SET_PDEATHSIG = 1
# A VIP as the messages and health.json name it: (address, port, protocol), with
# the address text as the daemon wrote it (str of its IPAddress). Reals are named by
# the same text of their IP. Every such string is interned: one object per distinct
# address, however many VIPs and messages name it.
Vk = Tuple[str, int, str]
# A real as last applied by the daemon: (health, state, reason); one shared tuple per
# distinct value (there are a handful).
Applied = Tuple[str, str, str]


_decode = json.JSONDecoder().raw_decode
_compact = json.JSONEncoder(separators=(",", ":")).encode


def _space(text: str, i: int) -> int:
    """Past the white space at i."""
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _after(text: str, i: int, token: str) -> int:
    """Where the next value starts after `token`, which must be next at i."""
    i = _space(text, i)
    if not text.startswith(token, i):
        raise ValueError(f"expected {token!r} at offset {i}")
    return _space(text, i + len(token))


def _members(text: str) -> Iterator[Tuple[str, Any]]:
    """The members of the JSON object `text`, in order, each decoded when it is
    reached; an array or an object comes as an iterator that decodes one element (an
    object: one (key, value) pair) at a time, to be used (or not) before the next
    member. The daemon's "set" arrays hold 16,000 entries at 1000 VIPs x 16 reals,
    "init" the states of 4000 checks: decoded whole, up to ~8 MB of lists, dicts,
    strings and floats at once, and the allocator's arenas kept much of it after it
    was freed."""
    return _pairs(text, [0], True)


def _pairs(text: str, end: List[int], lazy: bool) -> Iterator[Tuple[str, Any]]:
    """The members of the object at text[end[0]], as _members (values decoded whole
    unless `lazy`); end[0] is set to just after it once they are all read."""
    i = _after(text, end[0], "{")
    if not text.startswith("}", i):
        while True:
            key, i = _decode(text, i)
            if not isinstance(key, str):
                raise ValueError(f"a key that is not a string at offset {i}")
            i = _after(text, i, ":")
            if lazy and text.startswith(("[", "{"), i):
                sub = [i]
                nested = _items(text, sub) if text[i] == "[" else _pairs(text, sub, False)
                yield key, nested
                for _ in nested:  # what the caller left
                    pass
                i = sub[0]
            else:
                value, i = _decode(text, i)
                yield key, value
            i = _space(text, i)
            if not text.startswith(",", i):
                break
            i = _after(text, i, ",")
    end[0] = _after(text, i, "}")


def _items(text: str, end: List[int]) -> Iterator[Any]:
    """The elements of the array at text[end[0]], decoded one at a time; end[0] is set
    to just after it once they are all read."""
    i = _after(text, end[0], "[")
    if not text.startswith("]", i):
        while True:
            value, i = _decode(text, i)
            yield value
            i = _space(text, i)
            if not text.startswith(",", i):
                break
            i = _after(text, i, ",")
    end[0] = _after(text, i, "]")


def _decoded(head: Sequence[Tuple[str, Any]], members: Iterator[Tuple[str, Any]]
             ) -> Iterator[Tuple[str, Any]]:
    """Members with their arrays and objects read whole (an object as a list of pairs)."""
    for key, value in itertools.chain(head, members):
        yield key, list(value) if isinstance(value, Iterator) else value


def _vk(w: Sequence[Any]) -> Vk:
    return sys.intern(str(w[0])), int(w[1]), sys.intern(str(w[2]))


class Lateness:
    """How late each of the last `size` probes left, and its percentiles.

    Each sample is kept as a whole number of 10 us ticks (health.json gives ms to two
    decimals) in a ring, and counted in a histogram: 4 bytes a sample where a float
    object took 32, and a percentile is a walk of the histogram, not a sort of
    100,000 floats at every save of health.json. The histogram is exact up to 655 ms;
    above, it counts 10 ms steps (a percentile there is the step's lower end), and
    the last step holds everything from 41 s on."""

    TICKS_PER_S = 100_000
    FINE = 1 << 16  # ticks 0..FINE-1 counted one by one
    BLOCK = 256  # fine ticks summed per block, so that a walk skips most of them
    STEP, STEPS = 1000, 4096  # above: counted per STEP ticks

    def __init__(self, size: int) -> None:
        self._ring = array("I", bytes(4 * size))
        self._next = 0  # where the next sample goes
        self.samples = 0
        self._fine = array("I", bytes(4 * self.FINE))
        self._blocks = array("I", bytes(4 * (self.FINE // self.BLOCK)))
        self._coarse = array("I", bytes(4 * self.STEPS))

    def add(self, late_s: float) -> None:
        t = min(int(late_s * self.TICKS_PER_S + 0.5), 0xFFFFFFFF) if late_s > 0 else 0
        ring, i = self._ring, self._next
        if self.samples == len(ring):
            self._count(ring[i], -1)
        else:
            self.samples += 1
        ring[i] = t
        self._count(t, 1)
        self._next = i + 1 if i + 1 < len(ring) else 0

    def _count(self, t: int, d: int) -> None:
        if t < self.FINE:
            self._fine[t] += d
            self._blocks[t // self.BLOCK] += d
        else:
            self._coarse[min((t - self.FINE) // self.STEP, self.STEPS - 1)] += d

    def percentile_ms(self, p: float) -> float:
        """The sample at rank min(n - 1, p * n) in ascending order, in ms (0.0 if none)."""
        n = self.samples
        if not n:
            return 0.0
        rank = min(n - 1, int(p * n))
        seen = 0
        for b, count in enumerate(self._blocks):
            if seen + count > rank:
                t = b * self.BLOCK
                while True:
                    seen += self._fine[t]
                    if seen > rank:
                        return t / 100
                    t += 1
            seen += count
        for step, count in enumerate(self._coarse):
            seen += count
            if seen > rank:
                return (self.FINE + step * self.STEP) / 100
        raise AssertionError("rank beyond the samples")


class Channel:
    """The socket to the daemon: whole lines in, buffered non-blocking lines out (a
    daemon busy applying must never stall the probes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        sock.setblocking(False)
        self._in = bytearray()
        self._out = bytearray()
        self._writing = False

    def send(self, msg: Dict[str, Any]) -> None:
        self.send_text((_compact(msg),))

    def send_text(self, pieces: Iterable[str]) -> None:
        """One message, from its JSON text in pieces (never the whole text at once)."""
        for piece in pieces:
            self._out += piece.encode()
        self._out += b"\n"
        self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                n = self.sock.send(self._out)
                del self._out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._out.clear()  # the daemon is gone; the reader sees EOF and we stop
        if self._out and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False

    def read(self) -> Optional[List[bytes]]:
        """Complete lines received so far; None at end of file."""
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self._in += data
        end = self._in.rfind(b"\n")
        if end < 0:
            return []
        with memoryview(self._in) as m:  # one copy of a line of megabytes, not two
            lines = bytes(m[:end]).split(b"\n")
        del self._in[:end + 1]
        return lines


class ToDaemon(logging.Handler):
    """Log records go to the daemon, which logs them where its own lines go."""

    def __init__(self, chan: Channel) -> None:
        super().__init__()
        self.chan = chan

    def emit(self, record: logging.LogRecord) -> None:
        self.chan.send({"op": "log", "level": record.levelno, "msg": record.getMessage()})


class Checker:
    def __init__(self, loop: asyncio.AbstractEventLoop, chan: Channel, state_dir: str,
                 ifname: str) -> None:
        self._loop, self.chan = loop, chan
        self.state_dir, self.ifname = state_dir, ifname
        self.states: Dict[str, HealthState] = {}
        self._optimistic = False
        # Each VIP's checks by real IP; the VIPs using each check (each VIP once).
        self._vips: Dict[Vk, Dict[str, Check]] = {}
        self._users: Dict[Check, List[Vk]] = {}
        self._intern: Dict[Check, Check] = {}  # the one object of each distinct check
        self._common: Dict[Tuple[str, Any], Any] = {}  # values many checks share
        self._timers: Dict[Check, asyncio.TimerHandle] = {}  # when(): the probe's due time
        # The timers' one context (the loop copies one per timer by default: 4000 of
        # them alive, and one more every probe). The checker sets no context variable.
        self._context = contextvars.copy_context()
        self._applied: Dict[Applied, Applied] = {}  # the one tuple of each distinct value
        self._vip_addrs: Dict[str, IPAddress] = {}  # VIP addresses: never a source
        self._avoid: Set[IPAddress] = set()
        self._sources: Dict[IPAddress, Optional[IPAddress]] = {}
        self._source_of: Dict[IPAddress, IPAddress] = {}
        self._prober: Optional[TcpDsrProber] = None
        self._prober_error = ""
        # Each real as last applied by the daemon, by VIP and real IP.
        self._reals: Dict[Vk, Dict[str, Applied]] = {}
        self._failing: List[str] = []
        self._changed: Dict[str, HealthState] = {}  # verdicts not yet sent
        self._dirty = False
        self._save_handle: Optional[asyncio.Handle] = None
        self._save_task: Optional[asyncio.Task[None]] = None
        self._save_again = False  # a transition came while a save was being rendered
        self._last_save = 0.0
        self._save_cost = 0.0
        self._tasks: Set[asyncio.Task[None]] = set()
        # For the benchmark and the exporter: how late each probe left (s), counts.
        self.lateness = Lateness(JITTER_SAMPLES)
        self.probes_total: Dict[str, int] = {"ok": 0, "failed": 0}
        self.stopped = asyncio.Event()

    # -- messages from the daemon ---------------------------------------------------------

    def on_readable(self) -> None:
        lines = self.chan.read()
        if lines is None:
            self.stop()  # the daemon is gone
            return
        for line in lines:
            if line:
                self.handle_line(line)

    def handle_line(self, line: bytes) -> None:
        self.handle(_members(line.decode()))

    def handle(self, members: Iterator[Tuple[str, Any]]) -> None:
        """One message, as its members in order (`_members`): a "set" is taken in one
        entry at a time, never decoded whole. The daemon writes "op" first; a message
        that does not is decoded whole first."""
        first = next(members, None)
        if first is None or first[0] != "op":
            msg = dict(_decoded([first] if first else [], members))
            first, members = ("op", msg.pop("op", None)), iter(msg.items())
        op = first[1]
        if op == "init":
            for key, value in members:
                if key == "optimistic":
                    self._optimistic = bool(value)
                elif key == "states":
                    for k, saved in value:
                        st = state_from_dict(saved)
                        if st is not None:
                            self.states[k] = st
        elif op == "vips":
            sets: List[Tuple[Vk, Dict[str, Check]]] = []
            dels: List[Vk] = []
            for key, value in members:
                if key == "set":
                    sets = [(_vk(w[0]), self._checks_from_wire(w[1])) for w in value]
                elif key == "del":
                    dels = [_vk(w) for w in value]
            self._configure(dels, sets)
        elif op == "reals":
            # "set" and "del" name different reals (the daemon's difference): their
            # order does not matter.
            for key, value in members:
                if key == "set":
                    applied = self._applied
                    for vkw, ip, health, state, reason in value:
                        a = (health, state, reason)
                        self._reals.setdefault(_vk(vkw), {})[sys.intern(ip)] = \
                            applied.setdefault(a, a)
                    if len(applied) > 1000:  # the values are few; never let it grow anyway
                        applied.clear()
                elif key == "del":
                    for vkw, ip in value:
                        vk = _vk(vkw)
                        reals = self._reals.get(vk)
                        if reals is not None:
                            reals.pop(ip, None)
                            if not reals:
                                del self._reals[vk]
                elif key == "failing_open":
                    self._failing = list(value)
            self._dirty = True
            self._schedule_save(0.0)
        elif op == "stop":
            self.stop()

    def _checks_from_wire(self, w: Sequence[Any]) -> Dict[str, Check]:
        """One VIP's checks by real IP, from [[ip, check], ...]."""
        checks: Dict[str, Check] = {}
        for ip, cw in w:
            c = check_from_wire(cw)
            # One object per distinct check, however many VIPs share it.
            known = self._intern.get(c)
            if known is None:
                known = self._shared_fields(c)
                self._intern[known] = known  # (not keyed by c, which would keep it)
            checks[sys.intern(ip)] = known
        return checks

    def _shared_fields(self, c: Check) -> Check:
        """c with the values that many checks have in common as one object each: the
        kind, timing, expected statuses, and a DSR check's VIP address (~200 B a check
        in fresh objects from each message)."""
        if len(self._common) > 10_000:  # they are few; never let them grow anyway
            self._common.clear()
        share = self._common.setdefault
        p = c.probe
        probe = replace(p, kind=share(("kind", p.kind), p.kind),
                        timeout=share(("float", p.timeout), p.timeout),
                        expect=share(("expect", p.expect), p.expect),
                        addr=share(("addr", p.addr), p.addr) if p.kind == TCP_DSR else p.addr)
        return Check(probe, share(("float", c.interval), c.interval), c.rise, c.fall)

    def stop(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        for t in self._tasks:
            t.cancel()
        if self._prober is not None:
            self._prober.close()
            self._prober = None
        if self._save_handle is not None:
            self._save_handle.cancel()
        if self._save_task is not None:
            self._save_task.cancel()
        self._save()
        self.stopped.set()

    # -- the checks -------------------------------------------------------------------------

    def _configure(self, dels: List[Vk], sets: List[Tuple[Vk, Dict[str, Check]]]) -> None:
        """VIPs gone (dels) and VIPs new or changed (sets): only checks that no VIP uses
        any more stop, only checks that none used before start; the rest run on."""
        users = self._users
        touched: Set[Check] = set()
        for _vk, checks in sets:
            touched.update(checks.values())
        for vk in [*dels, *(k for k, _ in sets)]:
            old = self._vips.pop(vk, None)
            for c in set(old.values()) if old else ():
                touched.add(c)
                lst = users[c]
                lst.remove(vk)
                if not lst:
                    del users[c]
        before = {c for c in touched if c in self._timers}
        for vk, checks in sets:
            self._vips[vk] = checks
            for c in set(checks.values()):
                users.setdefault(c, []).append(vk)
        gone = [c for c in before if c not in users]
        added = [c for c in touched if c in users and c not in before]
        for c in gone:
            self._intern.pop(c, None)
            h = self._timers.pop(c, None)
            if h is not None:
                h.cancel()
        addrs = {vk[0] for vk in self._vips}
        if addrs != self._vip_addrs.keys():
            old_addrs = self._vip_addrs
            self._vip_addrs = {a: old_addrs.get(a) or ipaddress.ip_address(a) for a in addrs}
            self._avoid = set(self._vip_addrs.values())
        self._sources.clear()
        self._source_of.clear()
        # The same rule as the daemon's copy (core/health.py carry); the daemon is
        # told the states of the added checks, which settles any race with a
        # transition that was on its way.
        carried = carry(gone, added, self.states, self._optimistic)
        gone_keys = {c.key for c in gone}
        # Keyed by the checks' own key strings (not copies from the daemon's messages).
        self.states = {k: st for k, st in self.states.items()
                       if k not in gone_keys and k not in carried}
        self.states.update(carried)
        now = self._loop.time()
        for c in added:
            due = now + random.uniform(0, min(c.interval, 1.0))
            self._timers[c] = self._loop.call_at(due, self._fire, c, context=self._context)
            self._changed[c.key] = self.states[c.key]
        self._optimistic = False
        if self._changed:
            self._send_verdicts()
        if self._prober is None and any(c.probe.kind == TCP_DSR for c in added):
            self._open_prober()
        self._dirty = True
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
            src = rawsock.source_for(dest, self.ifname, self._avoid)
            # One object per distinct source (a few), not one per destination (4000).
            self._sources[dest] = src if src is None else self._source_of.setdefault(src, src)
        return self._sources[dest]

    def _fire(self, c: Check) -> None:
        now = self._loop.time()
        h = self._timers.get(c)
        due = now if h is None else h.when()
        self.lateness.add(now - due)
        nxt = due + c.interval
        if nxt < now:  # far behind (a stall): do not fire a burst to catch up
            nxt = now + c.interval
        self._timers[c] = self._loop.call_at(nxt, self._fire, c, context=self._context)
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
        for vk in self._users[c]:
            vip = vipkey_from_wire(vk)
            for ip, c2 in self._vips[vk].items():
                if c2 is c or c2.key == c.key:  # (or c is an equal one from before a reload)
                    line = transition_text(vip, ipaddress.ip_address(ip), st, c)
                    if st.up:
                        log.info("%s", line)
                    else:
                        log.warning("%s", line)
        if not self._changed:  # one message for the transitions of one loop pass
            self._loop.call_soon(self._send_verdicts)
        self._changed[c.key] = st
        self._schedule_save(0.0)

    def _send_verdicts(self) -> None:
        """{"op": "verdicts", "states": {...}}, encoded a state at a time: the states of
        4000 checks as dicts first, then as one text, left ~4 MB in the arenas."""
        if self._changed:
            changed, self._changed = self._changed, {}
            self.chan.send_text(itertools.chain(
                ('{"op":"verdicts","states":{',),
                (("," if n else "") + _compact(k) + ":" + _compact(state_to_dict(st))
                 for n, (k, st) in enumerate(changed.items())),
                ("}}",)))

    # -- health.json ----------------------------------------------------------------------

    def _schedule_save(self, delay: float) -> None:
        if self._save_task is not None:
            self._save_again = self._save_again or delay == 0
            return
        if self._save_handle is not None:
            if delay > 0:
                return
            self._save_handle.cancel()
        # Coalesce: never more than ~5% of the time spent writing the file.
        gap = max(delay, self._last_save + 20 * self._save_cost - time.monotonic())
        self._save_handle = self._loop.call_later(max(0.0, gap), self._save_and_rearm)

    def _save_and_rearm(self) -> None:
        self._save_handle = None
        if not self._dirty:
            self._schedule_save(REFRESH_S)
            return
        task = self._loop.create_task(self._save_async())
        self._save_task = task

        def done(_t: asyncio.Task[None]) -> None:
            self._save_task = None
            again, self._save_again = self._save_again, False
            self._schedule_save(0.0 if again else REFRESH_S)

        task.add_done_callback(done)

    async def _save_async(self) -> None:
        """Render health.json a slice at a time, giving the loop back between slices:
        a whole file at 1000 VIPs x 16 reals takes 100+ ms of CPU, which as one piece
        made every probe due meanwhile late by as much (the jitter p99). Each slice is
        written as it is rendered (the whole text is ~2.5 MB there), to a file renamed
        into place at the end: a reader or a restart sees the old file or the new one."""
        self._dirty = False
        busy, t = 0.0, time.monotonic()
        path = state_path(self.state_dir)
        # Not _save()'s name: it writes that one on stop, while this save may be
        # cancelled midway with its file still open.
        tmp = f"{path}.{os.getpid()}.part"
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            with open(tmp, "w") as f:
                for n, piece in enumerate(self._pieces()):
                    f.write(piece)
                    if n % SLICE == SLICE - 1:
                        busy += time.monotonic() - t
                        await asyncio.sleep(0)
                        t = time.monotonic()
            os.replace(tmp, path)
        except OSError as e:
            log.error("cannot write %s: %s", path, e)
            _unlink(tmp)
        except asyncio.CancelledError:
            _unlink(tmp)
            raise
        busy += time.monotonic() - t
        self._last_save, self._save_cost = time.monotonic(), busy

    def _save(self) -> None:
        """At once (on the way out), written as it is rendered all the same."""
        self._dirty = False
        path = state_path(self.state_dir)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            with open(tmp, "w") as f:
                f.writelines(self._pieces())
            os.replace(tmp, path)
        except OSError as e:
            log.error("cannot write %s: %s", path, e)
            _unlink(tmp)

    def _pieces(self) -> Iterator[str]:
        """health.json's text, one record a piece: every check's verdict, and each real
        as last applied. Safe across the slices of a save without copying it all: it
        walks lists of the check keys and of the VIPs taken at the start (a reload
        replaces self.states and a VIP's checks, never shrinks them), and copies one
        VIP's reals at a time."""
        states = self.states
        keys = list(states)
        reals = list(self._reals.items())
        late = self.lateness
        stats = {"probes": dict(self.probes_total), "checks": len(self._users), "pid": os.getpid(),
                 "lateness_ms": {"p50": late.percentile_ms(0.5), "p99": late.percentile_ms(0.99),
                                 "max": late.percentile_ms(1.0), "samples": late.samples}}
        yield (f'{{"version": {STATE_VERSION}, "written_at": {json.dumps(time.time())}, '
               f'"stats": {json.dumps(stats)}, "failing_open": {json.dumps(self._failing)},'
               '\n"checks": {')
        for n, key in enumerate(keys):
            yield ("" if not n else ",\n") + json.dumps(key) + ": " + \
                json.dumps(state_to_dict(states[key]))
        yield '},\n"reals": ['
        n = 0
        no_checks: Dict[str, Check] = {}
        for vk, by_ip in reals:
            checks = self._vips.get(vk, no_checks)
            for ip, (health, state, reason) in list(by_ip.items()):
                rec: Dict[str, Any] = {"vip": vk[0], "port": vk[1], "protocol": vk[2], "ip": ip,
                                       "health": health, "state": state}
                if reason:
                    rec["reason"] = reason
                c = checks.get(ip)
                if c is not None:
                    rec["check"] = c.key
                yield ("" if not n else ",\n") + json.dumps(rec)
                n += 1
        yield "]}\n"


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the daemon dies, however it dies (and it may already have)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # end of file on the socket still stops us
    if os.getppid() != parent:
        sys.exit(0)


async def serve(sock: socket.socket, state_dir: str, ifname: str) -> None:
    loop = asyncio.get_running_loop()
    chan = Channel(loop, sock)
    log.addHandler(ToDaemon(chan))
    log.setLevel(logging.INFO)
    log.propagate = False
    checker = Checker(loop, chan, state_dir, ifname)
    loop.add_reader(sock.fileno(), checker.on_readable)
    loop.add_signal_handler(signal.SIGTERM, checker.stop)
    loop.add_signal_handler(signal.SIGINT, checker.stop)
    await checker.stopped.wait()
    loop.remove_reader(sock.fileno())


USAGE = ("usage: python -m xdplbd.service.healthd --fd N --parent PID --interface IF "
         "--state-dir DIR")


def _options(argv: Sequence[str]) -> Dict[str, str]:
    """The daemon's command line, "--name value" or "--name=value" (not argparse: ~0.35 MB
    of RSS for four options that nobody types)."""
    if "-h" in argv or "--help" in argv:
        print(__doc__.split("\n")[0] + "\n\n" + USAGE)
        sys.exit(0)
    names = ("--fd", "--parent", "--interface", "--state-dir")
    opts: Dict[str, str] = {}
    rest = list(argv)
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name not in names or name in opts or not (eq or rest):
            sys.exit(f"{USAGE}\nbad argument: {name}")
        opts[name] = value if eq else rest.pop(0)
    missing = [n for n in names if n not in opts]
    if missing:
        sys.exit(f"{USAGE}\nmissing: {' '.join(missing)}")
    for n in ("--fd", "--parent"):
        if not opts[n].isdigit():
            sys.exit(f"{USAGE}\n{n}: not a number: {opts[n]}")
    return opts


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = _options(sys.argv[1:] if argv is None else argv)
    _die_with_parent(int(opts["--parent"]))
    heap.big_blocks_apart()  # a message line of megabytes leaves no hole in the heap
    sock = socket.socket(fileno=int(opts["--fd"]))
    asyncio.run(serve(sock, opts["--state-dir"], opts["--interface"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
