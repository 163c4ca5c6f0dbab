"""Follow the kernel: the reals' MACs in the neighbour table, and the LB's own link.

One thread owns the netlink sockets (pyroute2 is not thread-safe). It keeps a
Neighbour per real IP (core/neighbours.py says what each message means), publishes
them as one dict replaced whole (the daemon's neigh_view reads it from the main
thread), and asks the daemon for one apply when a real's MAC or resolution changes.
Link events of the LB's interface (gone, back under a new index, a new MAC) ask the
daemon to check its link; the daemon re-attaches. Nothing here writes a map.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set

from xdplbd.core.effective import Neighbour
from xdplbd.core.model import Config, IPAddress
from xdplbd.core.neighbours import LinkEvent, NeighEntry, change_line, needs_asking, observe
from xdplbd.core.neighbours import waiting as waiting_for
from xdplbd.core.neighbours import wanted as wanted_ips
from xdplbd.kernel.netlink import Netlink

log = logging.getLogger("xdplbd")

# How often an unresolved real is asked for again. A managed entry is re-probed by
# the kernel too; older kernels' NTF_USE probes once (3 tries, ~3 s to FAILED).
RETRY_S = 1.0
DRAIN_S = 0.05  # at most this long reading one burst before acting on it
DUMP_EVERY_S = 5.0
DUMP_OVER = 32  # more unresolved reals than this: one dump instead of a lookup each
REASON = "neighbour"  # request_apply reasons start with it (the daemon logs its map ops quietly)


class NeighbourMonitor:
    def __init__(self, ifname: str, request_apply: Callable[[str], None],
                 link_changed: Callable[[], None]) -> None:
        self.ifname = ifname
        self._request_apply = request_apply
        self._link_changed = link_changed
        self._view: Dict[IPAddress, Neighbour] = {}  # replaced whole, never mutated
        self._resolve: List[IPAddress] = []
        self._watch: List[IPAddress] = []
        self._wanted_gen = 0  # bumped by set_wanted; the thread catches up
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="neighbours", daemon=True)
        self.error = ""  # why the thread stopped, if it did

    # -- called from the main thread --------------------------------------------

    def view(self) -> Mapping[IPAddress, Neighbour]:
        return self._view

    def seed(self, last_macs: Mapping[IPAddress, str]) -> None:
        """MACs the maps hold already (a restart): until the kernel answers, a real keeps
        its MAC (resolved), so a restart never takes a working real out of its ring."""
        self._view = {ip: Neighbour(mac, True) for ip, mac in last_macs.items()}

    def set_wanted(self, cfg: Config) -> None:
        resolve, watch = wanted_ips(cfg)
        with self._lock:
            if resolve == self._resolve and watch == self._watch:
                return
            self._resolve, self._watch = resolve, watch
            self._wanted_gen += 1
            self._settled.clear()
        self._wake()

    def start(self) -> None:
        self._thread.start()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until every real to resolve has an answer (a MAC, or FAILED)."""
        return self._settled.wait(timeout)

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            nl = Netlink()
        except OSError as e:
            self.error = f"netlink: {e}"
            log.error("cannot watch neighbours and links: %s; reals without a mac get no "
                      "backend", e)
            self._settled.set()
            return
        try:
            _Follower(self, nl).run()
        except Exception as e:  # keep the daemon up; say why MACs no longer follow
            self.error = f"{type(e).__name__}: {e}"
            log.exception("the neighbour watch stopped: %s", e)
            self._settled.set()
        finally:
            nl.close()


class _Follower:
    """The thread's state: what it last told the daemon and what it waits for."""

    def __init__(self, mon: NeighbourMonitor, nl: Netlink) -> None:
        self.mon = mon
        self.nl = nl
        self.ifindex = 0  # 0 while the interface is gone
        self.lb_mac: Optional[str] = None
        self.gen = -1
        self.resolve: Set[IPAddress] = set()
        self.watch: Set[IPAddress] = set()
        self.asked: Dict[IPAddress, float] = {}  # ip -> when last asked
        self.table_full = False
        self.dumped = 0.0

    def run(self) -> None:
        self._read_link()
        self._catch_up()
        while not self.mon._stop:
            timeout = RETRY_S / 2
            r, _, _ = select.select([self.nl, self.mon._wake_r], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(self.mon._wake_r, 4096)
            if self.mon._stop:
                return
            if self.nl in r:
                try:
                    events = self._drain()
                except OverflowError as e:
                    log.warning("%s; reading the neighbour table again", e)
                    self._read_link()
                    self._resync()
                    continue
                self._handle(events)
            self._catch_up()
            self._retry()

    def _drain(self) -> List[object]:
        """Every event waiting now, as one batch: a burst (4096 reals resolving at
        once) is then one copy of the view and one apply, not one per message."""
        events: List[object] = []
        deadline = time.monotonic() + DRAIN_S
        while True:
            batch = self.nl.events()
            events.extend(batch)
            if not batch or time.monotonic() > deadline:
                return events
            r, _, _ = select.select([self.nl], [], [], 0)
            if not r:
                return events

    # what the daemon wants resolved
    def _catch_up(self) -> None:
        with self.mon._lock:
            gen, resolve, watch = self.mon._wanted_gen, self.mon._resolve, self.mon._watch
        if gen == self.gen:
            return
        self.gen = gen
        old = self.resolve | self.watch
        self.resolve, self.watch = set(resolve), set(watch)
        gone = old - self.resolve - self.watch
        if self.ifindex:
            for ip in gone & set(self.asked):
                with contextlib.suppress(OSError):  # our managed entry; the kernel re-learns
                    self.nl.forget(self.ifindex, ip)
        for ip in gone:
            self.asked.pop(ip, None)
        self._publish({ip: n for ip, n in self.mon._view.items() if ip not in gone}, quiet=True)
        self._resync()

    def _resync(self) -> None:
        """Read the whole table, then ask for every real it cannot answer for."""
        if not self.ifindex:
            self._check_settled()
            return
        entries = {e.ip: e for e in self.nl.neighbours(self.ifindex)}
        self._apply(e for ip, e in entries.items() if ip in self.resolve or ip in self.watch)
        ask = []
        for ip in self.resolve:
            e = entries.get(ip)
            if e is None or not (e.valid or e.state & 0x01):
                ask.append(ip)
        self._ask(ask)
        self._check_settled()

    def _ask(self, ips: List[IPAddress]) -> None:
        """Ask the kernel to resolve these IPs (all requests pipelined: ~10 us each)."""
        if not self.ifindex or not ips:
            return
        t0 = time.monotonic()
        for ip in ips:
            self.asked[ip] = t0
        try:
            refused = self.nl.resolve_many(self.ifindex, ips)
        except OSError as e:
            log.debug("asking the kernel to resolve %d IPs: %s", len(ips), e)
            return
        if len(ips) > 1:
            log.debug("asked the kernel to resolve %d IPs in %.1f ms", len(ips),
                      (time.monotonic() - t0) * 1000)
        for ip, why in refused.items():
            if why.errno == errno.ENOBUFS and not self.table_full:
                self.table_full = True  # once: it repeats for every real until fixed
                log.warning("the kernel's neighbour table is full (%s): raise "
                            "net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2, and the "
                            "net.ipv6 ones) above the number of reals plus the hosts this "
                            "machine talks to; reals that cannot be resolved get no flows", why)
            elif why.errno != errno.ENOBUFS:
                log.debug("asking the kernel to resolve %s: %s", ip, why)

    def _retry(self) -> None:
        """For reals still unresolved a while after asking: read their entries (an
        event may have been lost), and ask again where the kernel gave up."""
        if not self.ifindex:
            return
        now = time.monotonic()
        view = self.mon._view
        due = [ip for ip in self.resolve
               if (ip not in view or not view[ip].resolved)
               and now - self.asked.get(ip, 0.0) >= RETRY_S]
        if not due:
            return
        try:
            if len(due) > DUMP_OVER:
                if now - self.dumped < DUMP_EVERY_S:
                    return  # a dump of thousands costs ~0.1-0.5 s of CPU: not every second
                self.dumped = now
                entries = {e.ip: e for e in self.nl.neighbours(self.ifindex)}
            else:
                entries = {}
                for ip in due:
                    found = self.nl.lookup(self.ifindex, ip)
                    if found is not None:
                        entries[ip] = found
        except OSError as err:
            log.debug("reading neighbour entries: %s", err)
            entries = {}
        self._apply(e for ip, e in entries.items() if ip in due)
        again = []
        for ip in due:
            entry = entries.get(ip)
            # An entry being probed (INCOMPLETE, NONE) is left alone: asking again would
            # restart its probe. A managed entry that FAILED is re-probed by the kernel.
            if entry is None or (entry.failed and not self.nl.managed):
                again.append(ip)
            else:
                self.asked[ip] = now  # look again in RETRY_S
        self._ask(again)
        self._check_settled()

    def _check_settled(self) -> None:
        view = self.mon._view
        if all(ip in view and (view[ip].resolved or view[ip].reason.startswith("no "))
               for ip in self.resolve) or not self.ifindex:
            self.mon._settled.set()

    # events
    def _handle(self, events: Iterable[object]) -> None:
        neigh: List[NeighEntry] = []
        link = False
        for ev in events:
            if isinstance(ev, NeighEntry):
                if ev.ifindex == self.ifindex and (ev.ip in self.resolve or ev.ip in self.watch):
                    neigh.append(ev)
            elif isinstance(ev, LinkEvent) and (ev.ifindex == self.ifindex
                                                or ev.ifname == self.mon.ifname):
                link = True
        if link:
            before = (self.ifindex, self.lb_mac)
            self._read_link()
            if (self.ifindex, self.lb_mac) != before:
                self.mon._link_changed()
                if self.ifindex and self.ifindex != before[0]:
                    self.asked.clear()
                    self._resync()  # the entries of the old index are gone with it
        if neigh:
            self._apply(neigh)
            self._ask([e.ip for e in neigh if e.ip in self.resolve and needs_asking(e)])
            self._check_settled()

    def _read_link(self) -> None:
        link = self.nl.link(self.mon.ifname)
        self.ifindex = link.ifindex if link is not None else 0
        self.lb_mac = link.mac if link is not None else None

    def _apply(self, entries: Iterable[NeighEntry]) -> None:
        view = dict(self.mon._view)
        changed = False
        for e in entries:
            prev = view.get(e.ip)
            new = observe(prev, e)
            if new is None:
                continue
            if e.ip in self.resolve:
                info, text = change_line(e.ip, prev, new, self.mon.ifname)
                log.log(logging.INFO if info else logging.DEBUG, "%s", text)
            view[e.ip] = new
            changed = True
        if changed:
            self._publish(view, quiet=False)

    def _publish(self, view: Dict[IPAddress, Neighbour], quiet: bool) -> None:
        for ip in self.resolve:
            if ip not in view:
                view[ip] = waiting_for(ip)
        if view == self.mon._view:
            return
        self.mon._view = view
        if not quiet:
            self.mon._request_apply(REASON)
