"""Scale-out benchmarks: what route announcement costs a reload, and how fast a withdrawn
node leaves the router's ECMP route.

The scale-out lab runs for real (xdplbd/lab/scaleout.py: a router with BIRD and ECMP,
LB nodes with BIRD and xdplbd, native XDP). Reload latency is measured as the lab's
other reload figures' end-to-end form: from the config write to state.toml naming the
new config, which the daemon writes after it has applied the maps *and* announced.

* announcement off: the config has no `announce`;
* announcement on: the same edits (a real's weight flips, so a ring changes) with
  `announce.bird`; what the node announces does not change, so the fragment is left
  alone (the announcer compares the text) and BIRD is not asked;
* announcement on, every edit changes the routes: a second VIP address comes and goes,
  so each reload also rewrites the fragment and waits for `birdc configure`.

Withdrawal: from `xdplb maintenance on` (the command, a Python start included) and
from the moment BIRD took the emptied fragment (the announcer's `configured_at`) until
the router's kernel route no longer has the node; and from a hard kill (link down)
until BFD has removed it.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import time
from datetime import datetime
from typing import Any, Dict, List

from xdplbd.lab.demo import wait_for
from xdplbd.lab.scaleout import VIP4, ScaleLab, ScaleSpec

EDITS = 30  # per mode
ROUNDS = 3  # modes interleaved in rounds, so drift hits all of them alike
WITHDRAWS = 10
KILLS = 3
EXTRA_VIP = "10.97.9.101"


def _pct(xs: List[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _edits(lab: ScaleLab, mode: str, n: int) -> List[float]:
    node = lab.node("lb1")
    lb = lab.daemons["lb1"]
    base = lab.xdplb_config(node)
    if mode == "off":
        base.pop("announce")
    out = []
    for i in range(n + 1):
        cfg = copy.deepcopy(base)
        for v in cfg["vips"]:
            v["reals"][-1]["weight"] = i % 2  # real3 drains and comes back: a new ring
        if mode == "routes" and i % 2:
            extra = copy.deepcopy(cfg["vips"][0])
            extra["vip"] = EXTRA_VIP
            cfg["vips"].append(extra)
        took = lb.apply(cfg)
        if i:  # the first edit of a block switches the mode: not a sample
            out.append(took * 1000)
        time.sleep(0.05)
    return out


def _withdraw(lab: ScaleLab) -> Dict[str, List[float]]:
    lb = lab.daemons["lb1"]
    hop = lab.node("lb1").ip4
    cli_ms, bird_ms = [], []
    for _ in range(WITHDRAWS):
        wait_for(lambda: hop in lab.nexthops(VIP4), 10, "lb1 in the ECMP route")
        # The command runs alongside: it returns only after polling state.toml, and
        # the route may be gone well before that.
        t0 = time.monotonic()
        cmd = subprocess.Popen(lb.cli_argv("maintenance", "on"), stdout=subprocess.DEVNULL)
        wait_for(lambda: hop not in lab.nexthops(VIP4), 10, "lb1 out", interval=0.001)
        gone_wall, gone = time.time(), time.monotonic()
        if cmd.wait(30) != 0:
            raise RuntimeError("xdplb maintenance on failed")
        cli_ms.append((gone - t0) * 1000)
        took = datetime.fromisoformat(lb.state()["announce"]["configured_at"]).timestamp()
        bird_ms.append((gone_wall - took) * 1000)
        lb.cli("maintenance", "off")
    wait_for(lambda: hop in lab.nexthops(VIP4), 10, "lb1 in the ECMP route")
    bfd_ms = []
    hop3 = lab.node("lb3").ip4
    for _ in range(KILLS):
        wait_for(lambda: hop3 in lab.nexthops(VIP4), 30, "lb3 in the ECMP route")
        t0 = lab.kill("lb3")
        wait_for(lambda: hop3 not in lab.nexthops(VIP4), 10, "BFD", interval=0.001)
        bfd_ms.append((time.monotonic() - t0) * 1000)
        lab.rejoin("lb3")
        time.sleep(1)
    return {"cli": cli_ms, "bird": bird_ms, "bfd": bfd_ms}


def run() -> Dict[str, Any]:
    # Without health checks: the figures isolate what route announcement costs a reload.
    lab = ScaleLab(ScaleSpec(prefix="sobench", n_lbs=3, n_reals=3, health=False))
    res: Dict[str, Any] = {"off": [], "on": [], "routes": []}
    try:
        lab.up()
        for _ in range(ROUNDS):
            for mode in ("off", "on", "routes"):
                res[mode] += _edits(lab, mode, EDITS // ROUNDS)
        lab.daemons["lb1"].apply(lab.xdplb_config(lab.node("lb1")))
        res["withdraw"] = _withdraw(lab)
    finally:
        lab.down()
    return res


def report(r: Dict[str, Any]) -> str:
    def row(name: str, xs: List[float], target: str = "-") -> str:
        return (f"| {name} | {statistics.median(xs):.0f} / {_pct(xs, 99):.0f} / "
                f"{max(xs):.0f} ms | {target} |")

    w = r["withdraw"]
    return "\n".join([
        "## Scale-out (lab: router BIRD + ECMP, 3 nodes with BIRD + xdplbd, native XDP)",
        "",
        "| measure | median / p99 / max | target |",
        "|---|---:|---:|",
        row(f"reload, announcement off: write -> applied ({len(r['off'])} edits)", r["off"]),
        row("reload, announcement on, routes unchanged", r["on"], "p99 as with it off"),
        row("reload, announcement on, every edit changes the routes (+ birdc configure)",
            r["routes"]),
        row(f"withdraw: BIRD took the empty fragment -> route gone at the router "
            f"({len(w['bird'])} runs)", w["bird"], "<= 1 s"),
        row("withdraw: `xdplb maintenance on` issued -> route gone at the router", w["cli"],
            "<= 1 s"),
        row(f"hard kill (link down) -> BFD removed the node at the router ({len(w['bfd'])} "
            "runs)", w["bfd"], "<= 1 s"),
    ])
