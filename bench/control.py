"""Control plane benchmarks: reload latency, initial apply, restart-to-READY, RSS.

The daemon runs for real (netns + veth, native XDP); latencies are measured
from the config write to the moment the new ring's digest is live in the map.
The one-real change flips VIP 0 between 16 and 15 reals, so after two edits its
ring comes from the daemon's small ring cache (a flapping real); the "cold" row
changes another VIP each time, so each edit builds its Maglev table anew.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from typing import Any, Dict, List, Tuple

from tests.daemon.conftest import Daemon, Netns
from xdplbd.core import schema
from xdplbd.core.config import parse_config
from xdplbd.core.model import Tunables
from xdplbd.core.plan import desired_digest
from xdplbd.kernel.dataplane import DataPlane

EDITS = 50
BIG = Tunables(max_vips=1024, max_reals=32768, conntrack_size=65536)


def _config(n_vips: int, reals_per_vip: int, first_vip_reals: int, fewer: int = 0) -> str:
    """VIP 0 has first_vip_reals; VIPs 1..fewer one real less; the others reals_per_vip."""
    vips = []
    for i in range(n_vips):
        n = first_vip_reals if i == 0 else reals_per_vip - (i <= fewer)
        vips.append({
            "vip": f"10.{100 + i // 250}.{i % 250}.1", "port": 80, "protocol": "tcp",
            "reals": [{"ip": f"172.20.{j}.{1 + i % 250}", "mac": f"02:00:00:00:{j:02x}:01"}
                      for j in range(n)],
        })
    t = BIG.__dict__
    return json.dumps({"interface": "lb0", "xdp_mode": "native", "tunables": t, "vips": vips})


def _rss_kb(pid: int) -> Tuple[int, int]:
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


def _wait_digest(dp: DataPlane, key: bytes, digest: int, timeout: float = 30) -> None:
    m = dp.maps["vips"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = m.lookup(key)
        if raw is not None and schema.VIP_INFO.unpack(raw[: schema.VIP_INFO.size])[2] == digest:
            return
        time.sleep(0.0005)
    raise TimeoutError("the change never reached the maps")


def _reload_latency(d: Daemon, n_vips: int) -> List[float]:
    texts = [_config(n_vips, 16, 16), _config(n_vips, 16, 15)]
    cfgs = [parse_config(t, "bench") for t in texts]
    key = schema.pack_vip_key(cfgs[0].vips[0].key)
    digests = [desired_digest(c.vips[0], BIG.ring_size) for c in cfgs]
    with d.dataplane_for(BIG) as dp:
        return edit_latencies(d, dp, key, digests, texts)


def edit_latencies(d: Daemon, dp: DataPlane, key: bytes, digests: List[int],
                   texts: List[str], pause: float = 0.05) -> List[float]:
    """ms from each config write to the VIP's new ring in the maps, alternating the
    two texts (whose rings have the two digests) EDITS times."""
    out = []
    for i in range(EDITS):
        which = (i + 1) % 2
        t0 = time.perf_counter()
        d.write_config(texts[which])
        _wait_digest(dp, key, digests[which])
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(pause)
    return out


def _reload_latency_cold(d: Daemon, n_vips: int) -> List[float]:
    """Edit k takes a real off VIP k: a ring never built before (no cache can help)."""
    out = []
    with d.dataplane_for(BIG) as dp:
        for k in range(1, EDITS + 1):
            text = _config(n_vips, 16, 16, fewer=k)
            vip = parse_config(text, "bench").vips[k]
            t0 = time.perf_counter()
            d.write_config(text)
            _wait_digest(dp, schema.pack_vip_key(vip.key), desired_digest(vip, BIG.ring_size))
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    return out


def run() -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    ns = Netns()
    work = tempfile.mkdtemp(prefix="xdplb-bench-")
    d = Daemon(ns, work)
    try:
        # Small config: compile on first start, then restarts that reuse it.
        d.write_config(_config(10, 16, 16))
        t0 = time.perf_counter()
        d.start()
        res["start_compile_s"] = time.perf_counter() - t0
        res["reload_10"] = _reload_latency(d, 10)
        restarts = []
        for _ in range(5):
            d.stop()
            t0 = time.perf_counter()
            d.start()
            restarts.append(time.perf_counter() - t0)
        res["restart_reuse_s"] = statistics.median(restarts)

        # 1000 VIPs x 16 reals: the initial apply, then one-real reloads.
        d.stop()
        d.write_config(_config(1000, 16, 16))
        t0 = time.perf_counter()
        d.start()
        res["initial_apply_1000_s"] = time.perf_counter() - t0
        assert d.proc is not None
        res["rss_after_apply_kb"] = _rss_kb(d.proc.pid)
        res["reload_1000"] = _reload_latency(d, 1000)
        res["reload_1000_cold"] = _reload_latency_cold(d, 1000)
        time.sleep(1)
        res["rss_steady_kb"] = _rss_kb(d.proc.pid)
    finally:
        d.stop()
        d.cleanup()
        ns.delete()
    return res


def _pct(xs: List[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report(r: Dict[str, Any]) -> str:
    lines = [
        "## Control plane (real daemon, netns + veth, native XDP)",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
    ]
    for n in (10, 1000):
        xs = r[f"reload_{n}"]
        lines.append(f"| one-real change, {n} VIPs: file write -> maps, median / p99 "
                     f"({EDITS} edits) | {statistics.median(xs):.0f} / {_pct(xs, 99):.0f} ms | "
                     f"{'p99 <= 100 ms' if n == 1000 else '-'} |")
    xs = r["reload_1000_cold"]
    lines.append(f"| the same, each edit a ring never built before (another VIP each time) | "
                 f"{statistics.median(xs):.0f} / {_pct(xs, 99):.0f} ms | - |")
    rss, hwm = r["rss_steady_kb"]
    lines += [
        f"| initial apply, 1000 VIPs x 16 reals (start to READY, incl. compile) | "
        f"{r['initial_apply_1000_s']:.1f} s | - |",
        f"| restart to READY, program reused (median of 5) | {r['restart_reuse_s']:.2f} s "
        "| <= 0.5 s |",
        f"| start to READY with a compile (10 VIPs) | {r['start_compile_s']:.2f} s | - |",
        f"| daemon RSS steady / peak (1000 VIPs) | {rss / 1024:.0f} / {hwm / 1024:.0f} MB | - |",
    ]
    return "\n".join(lines)

