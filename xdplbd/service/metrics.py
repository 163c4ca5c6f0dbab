"""Prometheus exporter inside xdplbd: off unless the config sets `metrics.listen`.

Every scrape reads the pinned maps afresh (a custom Collector: no counters are
copied or cached in the daemon), so /metrics equals the map sums at scrape
time. Reload counts, results and the generation come from the daemon object.
The listener follows `metrics.listen` across reloads. A listener that cannot
bind is logged as an error and forwarding goes on: metrics never stop the
data plane. Metric names and labels: docs/operating.md.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Protocol, Tuple

from xdplbd import __version__
from xdplbd.core.effective import Effective
from xdplbd.core.health import check_of
from xdplbd.core.model import Config
from xdplbd.kernel import libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.loader import Program
from xdplbd.kernel.snapshot import Snapshot, take
from xdplbd.service.health import HealthChecker

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

# prometheus-client and the HTTP server (~4 MB, ~0.1 s) are imported only once an
# exporter listens: importing this module costs the daemon nothing.

log = logging.getLogger("xdplbd")

VIP_LABELS = ["vip", "port", "proto"]
REAL_LABELS = [*VIP_LABELS, "real"]


class DaemonView(Protocol):
    """What the exporter reads from the daemon, and nothing more: the exporter
    depends on this, not on the Daemon class (which satisfies it)."""

    @property
    def cfg(self) -> Optional[Config]: ...
    @property
    def pin_dir(self) -> str: ...
    @property
    def reload_results(self) -> Dict[str, int]: ...
    @property
    def last_reload(self) -> Dict[str, Any]: ...
    @property
    def generation(self) -> int: ...
    @property
    def applied_at(self) -> str: ...
    @property
    def started_at(self) -> str: ...
    @property
    def program(self) -> Optional[Program]: ...
    @property
    def ifindex(self) -> int: ...
    @property
    def ifname(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def announcement(self) -> Dict[str, Any]: ...
    @property
    def effective(self) -> Optional[Effective]: ...
    @property
    def health(self) -> Optional[HealthChecker]: ...


def _epoch(iso: Any) -> Optional[float]:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def families(snap: Snapshot) -> List[Metric]:
    """The data plane's metrics from one snapshot (pure, unit-testable)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    vp = CounterMetricFamily("xdplb_vip_packets", "Packets to the VIP the data plane "
                             "handled: forwarded to a real, or dropped for want of one",
                             labels=VIP_LABELS)
    vb = CounterMetricFamily("xdplb_vip_bytes", "Bytes of those packets (whole frames)",
                             labels=VIP_LABELS)
    vf = GaugeMetricFamily("xdplb_vip_tracked_flows", "Live conntrack entries of the VIP: "
                           "UDP flows not idle past the timeout, TCP flows until replaced "
                           "(so an upper bound on open connections)", labels=VIP_LABELS)
    rp = CounterMetricFamily("xdplb_real_packets", "Packets forwarded to the real (XDP_TX)",
                             labels=REAL_LABELS)
    rb = CounterMetricFamily("xdplb_real_bytes", "Bytes forwarded to the real (whole frames)",
                             labels=REAL_LABELS)
    rf = GaugeMetricFamily("xdplb_real_tracked_flows", "Live conntrack entries pointing at "
                           "the real (see xdplb_vip_tracked_flows)", labels=REAL_LABELS)
    rw = GaugeMetricFamily("xdplb_real_weight", "Maglev weight of the real; 0 = draining",
                           labels=REAL_LABELS)
    for v in snap.vips:
        vl = [str(v.key.addr), str(v.key.port), v.key.proto]
        vp.add_metric(vl, v.packets)
        vb.add_metric(vl, v.bytes)
        if v.flows is not None:
            vf.add_metric(vl, v.flows)
        for r in v.reals:
            rl = [*vl, r.ip]
            rp.add_metric(rl, r.packets)
            rb.add_metric(rl, r.bytes)
            rw.add_metric(rl, r.weight)
            if r.flows is not None:
                rf.add_metric(rl, r.flows)
    op = CounterMetricFamily("xdplb_outcome_packets", "Packets the XDP program saw, by outcome "
                             "(a packet counts under each outcome it meets: tx, ct_hit, ...)",
                             labels=["outcome"])
    ob = CounterMetricFamily("xdplb_outcome_bytes", "Bytes of those packets, by outcome",
                             labels=["outcome"])
    for name, (p, b) in snap.outcomes.items():
        op.add_metric([name], p)
        ob.add_metric([name], b)
    out: List[Metric] = [vp, vb, vf, rp, rb, rf, rw, op, ob]
    if snap.conntrack_entries is not None:
        out.append(GaugeMetricFamily("xdplb_conntrack_entries", "Entries in the connection "
                                     "table (stale and idle ones included)",
                                     value=snap.conntrack_entries))
    out.append(GaugeMetricFamily("xdplb_conntrack_capacity", "Size of the connection table "
                                 "(tunables.conntrack_size, in 8-entry buckets)",
                                 value=snap.conntrack_max))
    return out


class XdplbCollector:
    """Reads the maps (through its own map handles) and the daemon on every scrape."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self._dp: Optional[DataPlane] = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._dp is not None:
                self._dp.close()
                self._dp = None

    def _snapshot(self) -> Snapshot:
        d = self.daemon
        if self._dp is None:
            assert d.cfg is not None
            self._dp = DataPlane(d.pin_dir, d.cfg.tunables)
        return take(self._dp, scan=True)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        t0 = time.monotonic()
        with self._lock:
            snap = self._snapshot()
        yield from families(snap)
        yield from self._daemon_families()
        yield GaugeMetricFamily("xdplb_scrape_duration_seconds", "Time this scrape took to "
                                "read the maps", value=time.monotonic() - t0)

    def _daemon_families(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        d = self.daemon
        rel = CounterMetricFamily("xdplb_reloads", "Config reloads since the daemon started "
                                  "(SIGHUP, `xdplb reload` or a file change), by result",
                                  labels=["result"])
        results = d.reload_results
        for result in ("ok", "rejected"):
            rel.add_metric([result], results.get(result, 0))
        yield rel
        last = d.last_reload
        if last:
            yield GaugeMetricFamily("xdplb_last_reload_success", "1 if the last reload was "
                                    "applied, 0 if it was rejected",
                                    value=1 if last.get("result") == "ok" else 0)
            at = _epoch(last.get("at"))
            if at is not None:
                yield GaugeMetricFamily("xdplb_last_reload_timestamp_seconds",
                                        "When the last reload finished", value=at)
        yield GaugeMetricFamily("xdplb_config_generation", "Generation of the live config "
                                "(grows by one with every change applied)", value=d.generation)
        applied = _epoch(d.applied_at)
        if applied is not None:
            yield GaugeMetricFamily("xdplb_config_applied_timestamp_seconds",
                                    "When the live config was last applied", value=applied)
        started = _epoch(d.started_at)
        if started is not None:
            yield GaugeMetricFamily("xdplb_daemon_start_time_seconds",
                                    "When this xdplbd started", value=started)
        info = InfoMetricFamily("xdplb_build", "xdplb version and the data plane program")
        prog = d.program
        info.add_metric([], {
            "version": __version__,
            "source_digest": prog.digest if prog else "",
            "prog_tag": prog.info.tag if prog else "",
        })
        yield info
        att = GaugeMetricFamily("xdplb_dataplane_attached", "1 if our XDP program is attached "
                                "to the interface", labels=["interface", "mode"])
        attached = 0
        if d.ifindex and prog is not None:
            try:
                attached = int(libbpf.xdp_query(d.ifindex).prog_id == prog.info.id)
            except libbpf.BpfError:
                attached = 0
        att.add_metric([d.ifname, d.mode], attached)
        yield att
        yield from _announce_families(d.announcement)
        yield from self._health_families()

    def _health_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d = self.daemon
        eff, hc, cfg = d.effective, d.health, d.cfg
        if eff is None or hc is None or cfg is None:
            return
        lab = ["vip", "port", "proto", "real"]
        up = GaugeMetricFamily("xdplb_real_health", "1 if the real's health check says up, 0 "
                               "if down (absent: not checked)", labels=lab)
        since = GaugeMetricFamily("xdplb_real_health_since_timestamp_seconds",
                                  "When the real's health last changed", labels=lab)
        last = GaugeMetricFamily("xdplb_real_last_check_success", "1 if the real's last check "
                                 "succeeded", labels=lab)
        last_at = GaugeMetricFamily("xdplb_real_last_check_timestamp_seconds",
                                    "When the real's last check finished", labels=lab)
        states, probe_counts = hc.results()
        for v in cfg.vips:
            for r in v.reals:
                c = check_of(v.key, r)
                st = states.get(c.key) if c is not None else None
                if st is None:
                    continue
                labels = [str(v.key.addr), str(v.key.port), v.key.proto, str(r.ip)]
                up.add_metric(labels, 1 if st.up else 0)
                since.add_metric(labels, st.since)
                if st.last is not None and st.last.at:
                    last.add_metric(labels, 1 if st.last.ok else 0)
                    last_at.add_metric(labels, st.last.at)
        yield from (up, since, last, last_at)
        fo = GaugeMetricFamily("xdplb_vip_failing_open", "1 if no real of the VIP is up and "
                               "all its weighted reals take new flows", labels=lab[:3])
        for v in cfg.vips:
            fo.add_metric([str(v.key.addr), str(v.key.port), v.key.proto],
                          1 if v.key in eff.failing_open else 0)
        yield fo
        probes = CounterMetricFamily("xdplb_health_probes", "Health probes sent, by result",
                                     labels=["result"])
        for result, n in probe_counts.items():
            probes.add_metric([result], n)
        yield probes


def _announce_families(ann: Dict[str, Any]) -> Iterator[Metric]:
    """Route announcement (core/announce.py): one-hot state per VIP, and maintenance."""
    from prometheus_client.core import GaugeMetricFamily

    if not ann:
        return
    yield GaugeMetricFamily("xdplb_maintenance", "1 if this node is in maintenance (its "
                            "VIPs withdrawn)", value=int(bool(ann.get("maintenance"))))
    yield GaugeMetricFamily("xdplb_announce_ok", "1 if BIRD took the last VIP route "
                            "update, 0 if it is being retried", value=int(not ann.get("error")))
    st = GaugeMetricFamily("xdplb_vip_announce", "1 for the VIP's announcement state: "
                           "announced, last-resort (no up real here) or withdrawn",
                           labels=[*VIP_LABELS, "state"])
    for key, v in sorted(ann.get("vips", {}).items()):
        host, _, rest = key.rpartition(":")
        port, _, proto = rest.partition("/")
        for state in ("announced", "last-resort", "withdrawn"):
            st.add_metric([host.strip("[]"), port, proto, state], int(v.get("state") == state))
    yield st


# --- the HTTP listener -----------------------------------------------------------------

def parse_listen(listen: str) -> Tuple[str, int]:
    """ "127.0.0.1:9110" / "[::1]:9110" / "host:9110" -> (host, port)."""
    if listen.startswith("["):
        host, _, port = listen[1:].partition("]:")
    else:
        host, _, port = listen.rpartition(":")
    return host, int(port)


def _make_server(host: str, port: int, app: Any) -> WSGIServer:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        daemon_threads = True
        allow_reuse_address = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    return make_server(host, port, app, Server, handler_class=QuietHandler)


class Exporter:
    """The /metrics listener; sync() makes it follow the daemon's config."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.collector = XdplbCollector(daemon)
        self.registry: Optional[CollectorRegistry] = None
        self.listen: Optional[str] = None
        self._server: Optional[WSGIServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()  # sync() runs in a starter thread, then on reloads

    def sync(self, *_: object) -> None:
        """Listen where the config says now (start, move or stop the listener)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        cfg = self.daemon.cfg
        want = cfg.metrics.listen if cfg is not None else None
        if want == self.listen and (want is None or self._server is not None):
            return
        self._stop_server()
        self.listen = want
        if want is None:
            return
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.process_collector import ProcessCollector

        if self.registry is None:
            self.registry = CollectorRegistry()
            self.registry.register(self.collector)
            ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, ...
        try:
            host, port = parse_listen(want)
            server = _make_server(host, port, make_wsgi_app(self.registry))
        except (OSError, ValueError) as e:
            log.error("metrics: cannot listen on %s: %s; running without the exporter", want, e)
            return
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics: serving Prometheus metrics on http://%s/metrics", want)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def stop(self) -> None:
        with self._lock:
            self._stop_server()
            self.collector.close()


def start_exporter(daemon: DaemonView) -> Exporter:
    """The exporter for this daemon, listening if (and while) the config asks for it.

    Returns at once: the first listen (imports, bind) happens in a thread, so the
    daemon's main loop, and its signal handlers, start without waiting for it."""
    exp = Exporter(daemon)
    if daemon.cfg is not None and daemon.cfg.metrics.listen:
        threading.Thread(target=exp.sync, name="metrics-start", daemon=True).start()
    return exp
