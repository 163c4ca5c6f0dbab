"""Health checks and `xdplb doctor` end to end: real nginx, wrk, namespaces, kernel BPF.

One lab (3 reals) and one xdplbd serve the module; checks run every 0.3 s so a
transition takes about a second. Each test leaves the lab as it found it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.e2e.harness import (
    cleanup_prefix,
    connections,
    e2e_prefix,
    http_once,
    pin_dir_for,
    spread,
    stuck,
)
from xdplbd.lab.demo import LbDaemon, Wrk, wait_for
from xdplbd.lab.topology import Lab, LabSpec, write_sysctls
from xdplbd.service.health import read_health

INTERVAL, TIMEOUT, RISE, FALL = 0.3, 0.2, 2, 3
DOWN_WINDOW = FALL * INTERVAL + 1.0  # the feature: a dead real is out within this
UP_WINDOW = RISE * INTERVAL + 1.0


class HealthLab:
    def __init__(self, lab: Lab, lb: LbDaemon) -> None:
        self.lab, self.lb = lab, lb

    def config(self, check: Optional[Dict[str, Any]] = None, *,
               udp_check: Optional[Dict[str, Any]] = None,
               macs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        """The lab's VIPs (v4 tcp, v4 udp, v6 tcp) with `check` on the TCP ones."""
        doc = self.lab.config()
        timing = {"interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL}
        for v in doc["vips"]:
            c = udp_check if v["protocol"] == "udp" else check
            if c is not None:
                v["healthcheck"] = {**timing, **c}
            for r in v["reals"]:
                name = self.name_of(r["ip"])
                if macs and name in macs:
                    r["mac"] = macs[name]
        return doc

    def name_of(self, ip: str) -> str:
        for r in self.lab.reals:
            if ip in (r.ip4, r.ip6):
                return r.name
        raise KeyError(ip)

    def status(self) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(self.lb.cli("status", "--json", check=False).stdout)
        return data

    def real(self, name: str, vip: str = "10.99.0.100", port: int = 80,
             proto: str = "tcp") -> Dict[str, Any]:
        ip = self.lab.real_ip6(name) if ":" in vip else self.lab.real_ip4(name)
        for v in self.status()["vips"]:
            if v["vip"] == vip and v["port"] == port and v["protocol"] == proto:
                for r in v["reals"]:
                    if r["ip"] == ip:
                        return dict(r)
        raise KeyError(name)

    def wait_health(self, name: str, health: str, timeout: float, **kw: Any) -> float:
        """Wait for the verdict; return when the checker reached it (its own wall-clock
        record in health.json), in seconds after this call started: polling the CLI
        on a loaded machine would add its own delay."""
        t0 = time.time()
        wait_for(lambda: self.real(name, **kw)["health"] == health, timeout,
                 f"{name} {health}: {self.lb.log_tail()}", interval=0.05)
        return self.since(name, **kw) - t0

    def since(self, name: str, vip: str = "10.99.0.100", port: int = 80,
              proto: str = "tcp") -> float:
        doc = read_health(self.lb.state_dir)
        ip = self.lab.real_ip6(name) if ":" in vip else self.lab.real_ip4(name)
        rec = next(r for r in doc["reals"] if (r["vip"], r["port"], r["protocol"], r["ip"])
                   == (vip, port, proto, ip))
        return float(doc["checks"][rec["check"]]["since"])

    def all_up(self) -> None:
        for v in self.status()["vips"]:
            for r in v["reals"]:
                if r["health"] == "down":
                    self.wait_health(self.name_of(r["ip"]), "up", 10, vip=v["vip"],
                                     port=v["port"], proto=v["protocol"])


@pytest.fixture(scope="module")
def hl(request: pytest.FixtureRequest) -> Iterator[HealthLab]:
    prefix = e2e_prefix("hc")
    request.addfinalizer(lambda: cleanup_prefix(prefix))
    lab = Lab(LabSpec(prefix=prefix, n_reals=3))
    lab.up()
    lb = LbDaemon(lab, pin_dir_for(prefix), xdp_mode="native")
    h = HealthLab(lab, lb)
    lb.write_config(h.config({"type": "tcp"}))
    lb.start()
    yield h
    lb.close()


@pytest.fixture
def tcp(hl: HealthLab) -> Iterator[HealthLab]:
    """The DSR TCP check on, every real up; restored afterwards."""
    if not hl.lb.running():
        hl.lb.start()
    hl.lb.apply(hl.config({"type": "tcp"}))
    hl.all_up()
    yield hl
    for r in hl.lab.real_names:
        hl.lab.start_nginx(r)
        hl.lab.set_unhealthy(r, False)
        hl.lab.start_udp(r)


class Prober(threading.Thread):
    """New connections to the VIP one after another, each timestamped with its real or
    its failure: when failures happen, and who answers."""

    def __init__(self, lab: Lab, host: str) -> None:
        super().__init__(daemon=True)
        self.lab, self.host = lab, host
        self.results: List[Tuple[float, str]] = []  # (monotonic time, real name or "error")
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                who = http_once(self.lab, self.host, timeout=1.0)
            except (OSError, RuntimeError, ValueError, IndexError):
                who = "error"
            self.results.append((t, who))
            time.sleep(0.005)

    def stop(self) -> List[Tuple[float, str]]:
        self.halt.set()
        self.join(5)
        return self.results


def real_packets(hl: HealthLab, ip: str, vip: str = "10.99.0.100", port: int = 80) -> int:
    for v in hl.lb.stats()["vips"]:
        if v["vip"] == vip and v["port"] == port:
            for r in v["reals"]:
                if r["ip"] == ip:
                    return int(r["packets"])
    return 0


def test_real_dies_under_load_gets_no_new_connections(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    url = f"http://{lab.vip4}/"
    ka = Wrk(lab, url, connections=24, duration=60, timeout=30)
    nc = Wrk(lab, url, connections=4, new_connections=True, duration=60, timeout=2)
    probe = Prober(lab, lab.vip4)
    try:
        ka.start()
        nc.start()
        wait_for(lambda: len(connections(lab, ka.pid)) >= 24, 10, "wrk keep-alive connections")
        probe.start()
        time.sleep(1.0)
        before = connections(lab, ka.pid)
        t0 = time.monotonic()
        lab.stop_nginx("real2")
        took = hl.wait_health("real2", "down", DOWN_WINDOW + 2)
        time.sleep(max(0.0, DOWN_WINDOW - (time.monotonic() - t0)))
        # After the window real2 receives nothing: no new flow reaches it.
        p0 = real_packets(hl, lab.real_ip4("real2"))
        time.sleep(1.5)
        p1 = real_packets(hl, lab.real_ip4("real2"))
        after = connections(lab, ka.pid)
        results = probe.stop()
        r_ka, r_nc = ka.stop(), nc.stop()
    finally:
        probe.halt.set()
        ka.kill()
        nc.kill()
    failed_at = [t - t0 for t, who in results if who == "error"]
    late = [t for t in failed_at if t > DOWN_WINDOW]
    early = [t for t in failed_at if t < -1.0]  # started < 1 s (its timeout) before: in flight
    print(f"\nreal2 marked down {took:.2f} s after nginx stopped (window {DOWN_WINDOW:.1f} s); "
          f"probe: {len(results)} new connections, {len(failed_at)} failed, at "
          f"{[round(t, 2) for t in failed_at]}; wrk keep-alive {r_ka.requests} requests "
          f"{r_ka.failed} failed, new-conn {r_nc.requests} requests {r_nc.failed} failed; "
          f"real2 packets after the window: {p1 - p0}")
    assert took <= DOWN_WINDOW
    assert not early and not late, f"failures outside the window: {early + late}"
    assert p1 == p0, f"real2 got {p1 - p0} packets after it was marked down"
    assert any(who == "real2" for t, who in results if t < t0), "real2 never answered before"
    assert not any(who == "real2" for t, who in results if t > t0 + DOWN_WINDOW)
    # Keep-alive connections to the other reals are unaffected: same real, not stuck.
    others = {p: c.real for p, c in before.items() if c.real in ("real1", "real3")}
    assert others and all(after[p].real == r for p, r in others.items() if p in after)
    assert len([p for p in others if p in after]) == len(others), "a keep-alive conn was lost"
    assert not [p for p in stuck(after) if p in others]
    # The new-connection wrk fails only on connections real2 took before the verdict.
    assert r_nc.failed <= r_nc.rate * DOWN_WINDOW

    # Real returns: up after rise x interval, and it takes new flows again.
    t1 = time.monotonic()
    lab.start_nginx("real2")
    took_up = hl.wait_health("real2", "up", UP_WINDOW + 2)
    print(f"real2 back up {took_up:.2f} s after nginx started (window {UP_WINDOW:.1f} s)")
    assert took_up <= UP_WINDOW
    answers, failures = spread(lab, lab.vip4, 90)
    assert failures == 0 and answers["real2"] > 0, answers
    assert time.monotonic() - t1 < 30


def test_vip_off_lo_only_the_dsr_check_sees_it(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    ns = lab.real_ns("real3")
    lab.ns_exec(ns, ["ip", "addr", "del", f"{lab.vip4}/32", "dev", "lo"])
    try:
        took = hl.wait_health("real3", "down", DOWN_WINDOW + 2)
        assert took <= DOWN_WINDOW
        r = hl.real("real3")
        assert r["state"] == "down" and "no SYN-ACK" in r["last_check"]["result"], r
        # The same real, checked on its own address (dsr: false): up, and stays up,
        # although every client flow it got would be lost.
        hl.lb.apply(hl.config({"type": "tcp", "dsr": False}))
        hl.wait_health("real3", "up", UP_WINDOW + 2)
        time.sleep(FALL * INTERVAL * 3)
        assert hl.real("real3")["health"] == "up"
    finally:
        lab.ns_exec(ns, ["ip", "addr", "add", f"{lab.vip4}/32", "dev", "lo"])


def test_http_503_marks_down_and_all_down_fails_open(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    hl.lb.apply(hl.config({"type": "http", "path": "/healthz"}))
    hl.all_up()
    lab.set_unhealthy("real1")
    hl.wait_health("real1", "down", DOWN_WINDOW + 2)
    r = hl.real("real1")
    assert "status 503" in r["last_check"]["result"] and r["state"] == "down", r
    answers, failures = spread(lab, lab.vip4, 60)
    assert failures == 0 and answers["real1"] == 0, answers
    # Every real down: the VIP fails open, all take new flows, and status says so.
    lab.set_unhealthy("real2")
    lab.set_unhealthy("real3")
    hl.wait_health("real3", "down", DOWN_WINDOW + 2)
    hl.wait_health("real2", "down", DOWN_WINDOW + 2)
    vip = next(v for v in hl.status()["vips"] if v["port"] == 80 and v["vip"] == lab.vip4)
    assert vip["failing_open"] is True
    assert all(r["health"] == "down" and r["state"] == "active" for r in vip["reals"]), vip
    assert "all reals down: failing open" in hl.lb.cli("status", check=False).stdout
    assert any("all reals down: failing open" in ln for ln in hl.lb.log_lines())
    answers, failures = spread(lab, lab.vip4, 90)
    assert failures == 0 and all(answers[r] > 0 for r in lab.real_names), answers


def test_restart_while_a_real_is_down_keeps_it_down(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    hl.lb.apply(hl.config({"type": "http", "path": "/healthz"}))
    hl.all_up()
    lab.set_unhealthy("real2")
    hl.wait_health("real2", "down", DOWN_WINDOW + 2)
    n_log = len(hl.lb.log_lines())
    probe = Prober(lab, lab.vip4)
    probe.start()
    try:
        hl.lb.restart()
        assert hl.real("real2")["state"] == "down"  # at once: the first apply kept it out
        time.sleep(4 * INTERVAL * FALL)
    finally:
        results = probe.stop()
    log = hl.lb.log_lines()[n_log:]
    assert any("health: resumed the verdicts" in ln for ln in log), log
    assert not [ln for ln in log if lab.real_ip4("real2") in ln and
                ("weight 0 -> 1" in ln or " up:" in ln)], log
    assert results and not [who for _, who in results if who in ("real2", "error")]
    answers, failures = spread(lab, lab.vip4, 60)
    assert failures == 0 and answers["real2"] == 0, answers


def test_a_killed_checker_is_restarted_and_verdicts_hold(tcp: HealthLab) -> None:
    """The checks run in a child of the daemon: killed, it is logged and restarted, a
    down real stays down meanwhile and after, and the new checker keeps checking."""
    lb = tcp.lb
    daemon = lb.pid
    assert daemon is not None
    tcp.lab.stop_nginx("real2")
    tcp.wait_health("real2", "down", DOWN_WINDOW + 5)
    old = int(read_health(lb.state_dir)["stats"]["pid"])
    assert old != daemon
    with open(f"/proc/{old}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == daemon  # its parent
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: any(f"the checker (pid {old}) exited with signal 9" in line
                         for line in lb.log_lines()), 10, f"no restart: {lb.log_tail()}")
    wait_for(lambda: int(read_health(lb.state_dir).get("stats", {}).get("pid", old)) != old,
             15, f"no new checker: {lb.log_tail()}")
    assert tcp.real("real2")["health"] == "down" and lb.running()
    tcp.lab.start_nginx("real2")
    tcp.wait_health("real2", "up", UP_WINDOW + 5)  # the new checker checks


def test_udp_check_against_the_lab_echo(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    hl.lb.apply(hl.config({"type": "tcp"}, udp_check={"type": "udp", "send": "ping",
                                                       "receive": "real"}))
    kw = {"port": 5353, "proto": "udp"}
    for r in lab.real_names:
        hl.wait_health(r, "up", UP_WINDOW + 2, **kw)
    lab.stop_udp("real1")
    hl.wait_health("real1", "down", DOWN_WINDOW + 2, **kw)
    assert hl.real("real1", **kw)["state"] == "down"
    hl.lb.apply(hl.config({"type": "tcp"}, udp_check={"type": "udp", "send": "ping",
                                                       "receive": "nope"}))
    # A changed check starts afresh (down until it passes); this one never does.
    wait_for(lambda: "does not start with" in str(hl.real("real2", **kw)["last_check"]), 5,
             "the new UDP check's first result", interval=0.05)
    assert hl.real("real2", **kw)["health"] == "down"


def doctor(hl: HealthLab) -> Tuple[int, Dict[str, Any], str]:
    j = hl.lb.cli("doctor", "--json", check=False)
    t = hl.lb.cli("doctor", "10.99.0.100:80/tcp", check=False)
    return j.returncode, json.loads(j.stdout), t.stdout


def failures(doc: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    return [(r["ip"], f["check"], f["detail"], f["fix"]) for v in doc["vips"]
            for r in v["reals"] for f in r["checks"] if not f["ok"]]


def test_doctor_passes_then_names_each_broken_setting(tcp: HealthLab) -> None:
    hl, lab = tcp, tcp.lab
    rc, doc, _ = doctor(hl)
    assert rc == 0 and doc["ok"] and not failures(doc), failures(doc)
    ip3 = lab.real_ip4("real3")
    ns = lab.real_ns("real3")

    lab.ns_exec(ns, ["ip", "addr", "del", f"{lab.vip4}/32", "dev", "lo"])
    try:
        rc, doc, text = doctor(hl)
    finally:
        lab.ns_exec(ns, ["ip", "addr", "add", f"{lab.vip4}/32", "dev", "lo"])
    bad = failures(doc)
    assert rc == 1 and {(ip, c) for ip, c, _, _ in bad} == {(ip3, "healthcheck")}, bad
    assert f"ip addr add {lab.vip4}/32 dev lo" in bad[0][3] and "fix:" in text

    write_sysctls(ns, {"net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.eth0.arp_ignore": "0"})
    try:
        rc, doc, text = doctor(hl)
    finally:
        write_sysctls(ns, {"net.ipv4.conf.all.arp_ignore": "1",
                           "net.ipv4.conf.eth0.arp_ignore": "1"})
    bad = failures(doc)
    assert rc == 1 and {(ip, c) for ip, c, _, _ in bad} == {(ip3, "arp")}, bad
    assert "arp_ignore=1" in bad[0][3] and "answers ARP" in bad[0][2]

    hl.lb.apply(hl.config({"type": "tcp"}, macs={"real1": "02:00:00:00:de:ad"}))
    try:
        rc, doc, text = doctor(hl)
    finally:
        hl.lb.apply(hl.config({"type": "tcp"}))
    bad = failures(doc)
    real1 = lab.reals[0]
    assert rc == 1 and {(ip, c) for ip, c, _, _ in bad} >= {(real1.ip4, "mac")}, bad
    fix = next(f for ip, c, _, f in bad if c == "mac" and ip == real1.ip4)
    assert f'mac to "{real1.mac}"' in fix
    # A wrong MAC also fails the DSR check itself: the SYN goes nowhere.
    assert {c for ip, c, _, _ in bad if ip == real1.ip4} <= {"mac", "healthcheck"}
    rc, doc, _ = doctor(hl)
    assert rc == 0, failures(doc)
