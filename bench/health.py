"""Health-check benchmark: 1000 VIPs x 16 reals, 4000 distinct endpoints checked every
second, by the real daemon (native XDP on a veth), against real TCP listeners.

The reals are 4000 addresses on the loopback of a second network namespace, behind
one next hop (one neighbour entry), answered by one nginx. Each real serves 4 VIPs
with the same check (TCP connect to its own address, `dsr: false`), so there are
16,000 (VIP, real) pairs and 4000 endpoints, each probed once a second. Nothing
leaves the machine.

Reported, for the daemon and for its health checker process (service/healthd.py)
apart and summed: CPU (% of one core, over a steady window) and RSS; check jitter
(how late each probe started against its schedule, p50/p99/max, from the checker
itself), steady and over the reloads; and reload latency (file write -> new ring in
the map, p99 of 50) with the checks running and then, in the same run and daemon,
with every check removed (the A/B: what the checks cost a reload).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any, Dict

from bench.control import EDITS, _pct, _rss_kb, _wait_digest, edit_latencies
from tests.daemon.conftest import PEER_IF, Daemon, Netns
from xdplbd.core import schema
from xdplbd.core.config import parse_config
from xdplbd.core.model import Tunables
from xdplbd.core.plan import desired_digest
from xdplbd.service.health import read_health

N_VIPS, REALS_PER_VIP, ENDPOINTS = 1000, 16, 4000
# EDITS: as the control-plane bench, whose edit loop this one uses
STEADY_S = 20.0
BIG = Tunables(max_vips=1024, max_reals=32768, conntrack_size=65536)
CHECK = {"type": "tcp", "dsr": False, "interval": 1, "timeout": 0.5, "rise": 2, "fall": 3}
NGINX = """daemon on; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 80 backlog=8192; return 200 "ok"; }} }}
"""


def real_ip(n: int) -> str:
    return f"10.211.{n // 250}.{1 + n % 250}"


def _config(mac: str, first_vip_reals: int = REALS_PER_VIP, checks: bool = True) -> str:
    vips = []
    for i in range(N_VIPS):
        n = first_vip_reals if i == 0 else REALS_PER_VIP
        vips.append({
            "vip": f"10.{100 + i // 250}.{i % 250}.1", "port": 80, "protocol": "tcp",
            **({"healthcheck": CHECK} if checks else {}),
            "reals": [{"ip": real_ip((i * REALS_PER_VIP + j) % ENDPOINTS), "mac": mac}
                      for j in range(n)],
        })
    return json.dumps({"interface": "lb0", "xdp_mode": "native", "tunables": BIG.__dict__,
                       "vips": vips})


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pss_kb(pid: int) -> int:
    """Proportional set size: each page shared with the other process (the interpreter's
    text, its libraries) counted half in each, so the two add up to what the pair really
    occupies (summed RSS counts those pages twice)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _wait_all_up(d: Daemon, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        checks = read_health(d.state_dir).get("checks", {})
        if len(checks) == ENDPOINTS and all(c.get("up") for c in checks.values()):
            return time.monotonic() - t0
        time.sleep(0.5)
    up = sum(1 for c in read_health(d.state_dir).get("checks", {}).values() if c.get("up"))
    raise TimeoutError(f"only {up} of {ENDPOINTS} endpoints up: {d.read_log()[-2000:]}")




def run() -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    ns = Netns()
    reals = ns.name + "-r"
    work = tempfile.mkdtemp(prefix="xdplb-bench-health-")
    nginx_dir = os.path.join(work, "nginx")
    os.makedirs(os.path.join(nginx_dir, "tmp"))
    d = Daemon(ns, work)
    try:
        subprocess.run(["ip", "netns", "add", reals], check=True)
        ns.ip("link", "set", PEER_IF, "netns", reals)
        ns.ip("addr", "add", "10.210.0.1/24", "dev", "lb0")
        ns.ip("route", "add", "10.211.0.0/16", "via", "10.210.0.2")
        batch = ["link set lo up", f"link set {PEER_IF} up",
                 f"addr add 10.210.0.2/24 dev {PEER_IF}"]
        batch += [f"addr add {real_ip(n)}/32 dev lo" for n in range(ENDPOINTS)]
        subprocess.run(["ip", "-n", reals, "-batch", "-"], input="\n".join(batch) + "\n",
                       text=True, check=True)
        subprocess.run(["ip", "netns", "exec", reals, "sysctl", "-qw",
                        "net.core.somaxconn=8192", "net.ipv4.tcp_tw_reuse=1"], check=True)
        conf = os.path.join(nginx_dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(d=nginx_dir))
        subprocess.run(["nsenter", f"--net=/run/netns/{reals}", "nginx", "-p", nginx_dir + "/",
                        "-c", conf], check=True)
        mac = subprocess.run(["ip", "-n", reals, "-j", "link", "show", PEER_IF],
                             capture_output=True, text=True, check=True).stdout
        mac = json.loads(mac)[0]["address"]
        texts = [_config(mac), _config(mac, REALS_PER_VIP - 1)]
        texts_off = [_config(mac, checks=False), _config(mac, REALS_PER_VIP - 1, checks=False)]
        d.write_config(texts[0])
        t0 = time.perf_counter()
        d.start(wait=False)
        d.wait_message("READY=1", timeout=300)  # a shared, loaded machine can be slow
        res["start_s"] = time.perf_counter() - t0
        assert d.proc is not None
        pid = d.proc.pid
        res["all_up_s"] = _wait_all_up(d)
        child = int(read_health(d.state_dir).get("stats", {}).get("pid", 0))
        res["checker_separate"] = bool(child) and child != pid
        # Steady state: CPU over a window, then the checker's own lateness figures.
        c0, k0, w0 = _cpu_s(pid), _cpu_s(child), time.monotonic()
        time.sleep(STEADY_S)
        wall = time.monotonic() - w0
        res["cpu_pct"] = 100 * (_cpu_s(pid) - c0) / wall
        res["checker_cpu_pct"] = 100 * (_cpu_s(child) - k0) / wall if res["checker_separate"] \
            else 0.0
        time.sleep(2.5)  # health.json is refreshed every ~2 s
        doc = read_health(d.state_dir)
        res["stats"] = doc.get("stats", {})
        res["down"] = sum(1 for c in doc.get("checks", {}).values() if not c.get("up"))
        res["rss_kb"] = _rss_kb(pid)
        res["checker_rss_kb"] = _rss_kb(child) if res["checker_separate"] else (0, 0)
        # Reloads while the checks run (A), then with no checks at all (B), on the same
        # daemon: VIP 0 flips between 16 and 15 reals.
        cfgs = [parse_config(t, "bench") for t in texts]
        key = schema.pack_vip_key(cfgs[0].vips[0].key)
        digests = [desired_digest(c.vips[0], BIG.ring_size) for c in cfgs]
        with d.dataplane_for(BIG) as dp:
            res["reload_ms"] = edit_latencies(d, dp, key, digests, texts, pause=0.1)
            time.sleep(2.5)
            res["reload_stats"] = read_health(d.state_dir).get("stats", {})
            res["rss_after_kb"] = _rss_kb(pid)
            res["checker_rss_after_kb"] = _rss_kb(child) if res["checker_separate"] else (0, 0)
            res["pss_after_kb"] = _pss_kb(pid) + (_pss_kb(child) if res["checker_separate"]
                                                  else 0)
            d.write_config(texts_off[0])  # every check stops
            _wait_digest(dp, key, digests[0])
            time.sleep(2.0)
            res["reload_off_ms"] = edit_latencies(d, dp, key, digests, texts_off, pause=0.1)
        res["log_lines"] = len(d.read_log().splitlines())
    finally:
        d.stop()
        d.cleanup()
        pidfile = os.path.join(nginx_dir, "nginx.pid")
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        subprocess.run(["ip", "netns", "del", reals], check=False)
        ns.delete()
    return res


def report(r: Dict[str, Any]) -> str:
    lat, off = r["reload_ms"], r["reload_off_ms"]
    late = r["stats"].get("lateness_ms", {})
    late_r = r["reload_stats"].get("lateness_ms", {})
    rss, hwm = r["rss_after_kb"]
    crss, chwm = r["checker_rss_after_kb"]
    probes = r["stats"].get("probes", {})
    sep = r["checker_separate"]

    def jit(x: Dict[str, Any]) -> str:
        return f"{x.get('p50', 0):.1f} / {x.get('p99', 0):.1f} / {x.get('max', 0):.1f} ms"

    return "\n".join([
        f"## Health checks ({N_VIPS} VIPs x {REALS_PER_VIP} reals, {ENDPOINTS} endpoints "
        "checked every second; real daemon, native XDP, TCP listeners in a netns)",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| CPU, steady ({STEADY_S:.0f} s window): daemon / checker / sum | {r['cpu_pct']:.0f} / "
        f"{r['checker_cpu_pct']:.0f} / {r['cpu_pct'] + r['checker_cpu_pct']:.0f} % of one core"
        " | - |",
        f"| check jitter (probe start vs schedule), steady: p50 / p99 / max | {jit(late)} | - |",
        f"| check jitter over the last ~25 s, reloads included: p50 / p99 / max | "
        f"{jit(late_r)} | - |",
        f"| reload, one-real change, checks running (A): median / p99 ({EDITS} edits) | "
        f"{statistics.median(lat):.0f} / {_pct(lat, 99):.0f} ms | p99 <= 100 ms |",
        f"| reload, one-real change, no checks (B, same run): median / p99 ({EDITS} edits) | "
        f"{statistics.median(off):.0f} / {_pct(off, 99):.0f} ms | - |",
        f"| RSS steady / peak: daemon | {rss / 1024:.0f} / {hwm / 1024:.0f} MB | - |",
        f"| RSS steady / peak: checker{'' if sep else ' (no separate process)'} | "
        f"{crss / 1024:.0f} / {chwm / 1024:.0f} MB | - |",
        f"| RSS steady: daemon + checker (pages they share counted twice) | "
        f"{(rss + crss) / 1024:.0f} MB | - |",
        f"| PSS steady: daemon + checker (each page once: their real footprint) | "
        f"{r['pss_after_kb'] / 1024:.0f} MB | <= 80 MB |",
        f"| start to READY / all {ENDPOINTS} endpoints up | {r['start_s']:.1f} s / "
        f"{r['all_up_s']:.1f} s | - |",
        f"| probes ok / failed, endpoints down at the end | {probes.get('ok', 0)} / "
        f"{probes.get('failed', 0)}, {r['down']} | 0 failed |",
    ])


if __name__ == "__main__":
    print(report(run()))
