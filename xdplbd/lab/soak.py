"""`make soak`: random steps under wrk load, the maps checked against the config after each.

Each step runs under its own wrk window against the loaded VIP (keep-alive and
new-connection mode at once, the latter from the whole client population), so
every failed request belongs to one step and gets that step's cause:

* ``removed real``: the step removed a real of the loaded VIP; its keep-alive
  connections and the new connections in flight to it may fail (at most as
  many as wrk has connections);
* ``real stopped``: nginx on a real of the loaded VIP was down for a moment;
* ``unexpected``: anything else. The target is 0.

After each step, read back from the pinned maps (kernel/dataplane.py):

* consistency: the plan from the live maps to the config is empty;
* leaks: every active backend slot belongs to a live VIP's real, every ring slot
  to a live VIP, and a ring names only its VIP's reals that take new flows;
* counters: every outcome total, and each VIP's and real's total while it
  stays, never goes down.

What "the config" means here: the soak's VIPs have no health checks and every real
its MAC, so the effective config (core/effective.py: the file filtered by health and
completed by MACs) is the file itself, and the maps are compared with the file. That
is the statement under test: under config churn, restarts and kills the maps converge
to what the file says. A real bounce is no health event here either: the stopped
real keeps its share of new flows, whose failures are counted as ``real stopped``.
Health checks (a real that stops drains) are tested in tests/e2e/test_health.py; a
soak config that asked for them, or for a MAC from the neighbour table, would make
the maps differ from the file by design, so `Soak.config` refuses one.

Steps and configs come from chaos.py, seeded: ``--seed`` replays a run's
sequence. The daemon runs with APPLY_DELAY_ENV set, so a kill -9 can land in
the middle of an apply; the step records whether it did (the maps matched
neither the old nor the new config when the daemon died).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from xdplbd.core.config import parse_config
from xdplbd.core.health import checks_of
from xdplbd.core.model import Config
from xdplbd.core.plan import PlanError, make_plan
from xdplbd.kernel.loader import remove_pins
from xdplbd.kernel.snapshot import open_pinned
from xdplbd.lab import chaos
from xdplbd.lab.demo import LbDaemon, Wrk
from xdplbd.lab.load import WrkPool
from xdplbd.lab.topology import Lab, LabSpec
from xdplbd.service.daemon import APPLY_DELAY_ENV
from xdplbd.service.statefile import read_state

APPLY_DELAY_MS = "4"  # per map operation: an apply lasts tens of ms, a kill can land in it
KEEPALIVE_CONNS, NEWCONN_CONNS = 8, 8
LEAD_S, TAIL_S = 0.3, 0.5  # load before and after each step's action


def render(world: chaos.World, lab: Lab) -> Dict[str, Any]:
    """lb_conf.json for a world, with the lab's addresses and MACs."""
    macs = lab.real_macs()
    vips = []
    for name, reals in world.items():
        where, port, proto = chaos.VIP_POOL[name]
        addr = {"vip4": lab.vip4, "vip6": lab.vip6}.get(where, where)
        v6 = ":" in addr
        vips.append({"vip": addr, "port": port, "protocol": proto, "reals": [
            {"ip": lab.real_ip6(r) if v6 else lab.real_ip4(r), "mac": macs[r], "weight": w}
            for r, w in reals.items()]})
    return {"interface": "eth0", "xdp_mode": "native", "vips": vips}


# --------------------------------------------------------------------------- checks

CounterSnap = Dict[str, Dict[Any, int]]


def read_maps(pin_dir: str, state_dir: str, cfg: Config
              ) -> Tuple[List[str], CounterSnap, int]:
    """(problems, counters, plan length) of the pinned maps against `cfg`."""
    problems: List[str] = []
    with open_pinned(pin_dir, read_state(state_dir)) as dp:
        live = dp.read_live()
        try:
            left = len(make_plan(live, cfg, count_moved=False).ops)
        except PlanError as e:
            problems.append(f"plan: {e}")
            left = -1
        if left > 0:
            problems.append(f"maps differ from the config: {left} operations short")
        if live.orphan_vip_ids or live.orphan_backend_ids:
            problems.append(f"orphans: rings {sorted(live.orphan_vip_ids)}, backends "
                            f"{sorted(live.orphan_backend_ids)}")
        used = {b.id for v in live.vips for b in v.backends}
        leaked = set(dp.backend_entries()) - used
        if leaked:
            problems.append(f"leaked backend ids {sorted(leaked)}")
        rings = dp.ring_ids()
        if set(rings) != {v.id for v in live.vips}:
            problems.append(f"ring slots {sorted(rings)} for VIP ids "
                            f"{sorted(v.id for v in live.vips)}")
        for v in live.vips:
            ring = dp.ring(v.id)
            takers = {b.id for b in v.backends if b.weight}
            stray = set(ring or ()) - takers - {0}
            if stray:
                problems.append(f"ring of {v.key} names backends {sorted(stray)}, not its "
                                f"reals taking flows {sorted(takers)}")
        c = dp.counters()
        snap: CounterSnap = {
            "outcomes": {k: p for k, (p, _b) in c.outcomes.items()},
            "vips": {(str(v.key), v.id): c.vips[v.id][0] for v in live.vips},
            "reals": {(str(v.key), str(b.ip), b.id): c.reals.get(b.id, (0, 0))[0]
                      for v in live.vips for b in v.backends},
        }
    return problems, snap, left


def counter_problems(before: CounterSnap, after: CounterSnap) -> List[str]:
    """Totals that went down. A VIP or real absent from either reading is skipped:
    one removed and added again starts from 0 (docs/operating.md, stats)."""
    out = []
    for group in ("outcomes", "vips", "reals"):
        for k, v in after[group].items():
            old = before[group].get(k)
            if old is not None and v < old:
                out.append(f"{group} {k}: {old} -> {v}")
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Totals:
    seed: int
    steps: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    reloads: int = 0  # config applied by the file watch or SIGHUP (and rejected ones)
    restarts: int = 0
    kills: int = 0
    kills_mid_apply: int = 0
    requests: int = 0
    failed: int = 0
    failed_by_cause: Counter[str] = field(default_factory=Counter)
    inconsistencies: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"seed": self.seed, "steps": self.steps, "kinds": dict(self.kinds),
                "reloads": self.reloads, "restarts": self.restarts, "kills": self.kills,
                "kills_mid_apply": self.kills_mid_apply, "requests": self.requests,
                "failed": self.failed, "failed_by_cause": dict(self.failed_by_cause),
                "unexpected_failures": self.failed_by_cause.get("unexpected", 0),
                "inconsistencies": len(self.inconsistencies),
                "inconsistency_details": self.inconsistencies[:50]}

    @property
    def ok(self) -> bool:
        return not self.inconsistencies and not self.failed_by_cause.get("unexpected", 0)


class Soak:
    def __init__(self, lab: Lab, pin_dir: str, seed: int, log: Any = None) -> None:
        self.lab = lab
        self.lb = LbDaemon(lab, pin_dir)
        self.lb.env = {APPLY_DELAY_ENV: APPLY_DELAY_MS}
        self.source = chaos.steps(seed)
        self.world = self.source.world
        self.totals = Totals(seed)
        self.counters: Optional[CounterSnap] = None
        self.log = log or sys.stdout
        self.url = f"http://{lab.vip4}/"

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def config(self, world: chaos.World) -> Tuple[Dict[str, Any], Config]:
        doc = render(world, self.lab)
        cfg = parse_config(json.dumps(doc), "soak")
        for v in cfg.vips:  # the maps are compared with the file: it must be the effective one
            if checks_of(v) or any(r.mac is None for r in v.reals):
                raise ValueError(f"soak config: vip {v.key} has health checks or a real "
                                 "without a mac; the maps would hold the health- and "
                                 "neighbour-adjusted config, not the file (see the docstring)")
        return doc, cfg

    def start(self) -> None:
        remove_pins(self.lb.pin_dir)
        self.lb.write_config(self.config(self.world)[0])
        self.lb.start()
        self.check(None)

    def close(self) -> None:
        self.lb.close()

    def run(self, seconds: float) -> Totals:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.one(self.source.next())
        return self.totals

    # -- one step
    def one(self, step: chaos.Step) -> None:
        t = self.totals
        t.steps += 1
        t.kinds[step.kind] += 1
        ka = Wrk(self.lab, self.url, connections=KEEPALIVE_CONNS, duration=300, timeout=10)
        nc = WrkPool(self.lab, self.url, connections=NEWCONN_CONNS, duration=300, timeout=10)
        mid = None
        try:
            ka.start()
            nc.start()
            time.sleep(LEAD_S)
            mid = self.act(step)
            time.sleep(TAIL_S)
            r_ka, r_nc = ka.stop(), nc.stop()
        finally:
            ka.kill()
            nc.kill()
        requests = r_ka.requests + r_nc.requests
        failed = r_ka.failed + r_nc.failed
        t.requests += requests
        t.failed += failed
        if failed:
            if step.removes_loaded_real():
                cause = "removed real"
                if failed > KEEPALIVE_CONNS + NEWCONN_CONNS:
                    t.inconsistencies.append(f"step {step.n}: {failed} failures on a removal, "
                                             f"more than wrk's {KEEPALIVE_CONNS + NEWCONN_CONNS} "
                                             "connections")
            elif step.kind == "real_bounce" and step.real in chaos._active(step.world,
                                                                            chaos.LOADED):
                cause = "real stopped"
            else:
                cause = "unexpected"
            t.failed_by_cause[cause] += failed
        problems = self.check(step)
        self.world = step.world
        self.say(f"step {step.n:4} {step.kind:16} {step.detail:58} {requests:7} req "
                 f"{failed:3} failed" + (f" [{mid}]" if mid else "")
                 + (f"  PROBLEMS: {problems}" if problems else ""))

    def act(self, step: chaos.Step) -> Optional[str]:
        """Carry out the step; a note for the log line."""
        t, lb = self.totals, self.lb
        if step.kind in chaos.CONFIG_KINDS:
            lb.apply(self.config(step.world)[0])
            t.reloads += 1
        elif step.kind == "sighup":
            r = lb.reload()
            if r.returncode != 0:
                t.inconsistencies.append(f"step {step.n}: xdplb reload: {r.stderr.strip()}")
            t.reloads += 1
        elif step.kind == "invalid_config":
            last = lb.apply_invalid(json.dumps(self.config(self.world)[0])[:-7])
            if last.get("result") != "rejected":
                t.inconsistencies.append(f"step {step.n}: invalid config not rejected")
            lb.apply(self.config(self.world)[0])  # the file is valid again for restarts
            t.reloads += 2
        elif step.kind == "restart":
            lb.stop()
            lb.start()
            t.restarts += 1
        elif step.kind == "kill9":
            time.sleep(random.random() * 0.2)
            lb.kill()
            lb.start()
            t.kills += 1
        elif step.kind == "kill9_mid_apply":
            return self._kill_mid_apply(step)
        elif step.kind == "real_bounce":
            assert step.real is not None
            self.lab.stop_nginx(step.real)
            time.sleep(step.down_s)
            self.lab.start_nginx(step.real)
        return None

    def _kill_mid_apply(self, step: chaos.Step) -> str:
        t, lb = self.totals, self.lb
        old_cfg = self.config(self.world)[1]
        doc, new_cfg = self.config(step.world)
        lb.write_config(doc)
        time.sleep(step.kill_after_ms / 1000)
        lb.kill()
        t.kills += 1
        _p, _c, left_old = read_maps(lb.pin_dir, lb.state_dir, old_cfg)
        _p, _c, left_new = read_maps(lb.pin_dir, lb.state_dir, new_cfg)
        where = ("before the apply" if left_old == 0 else "after the apply" if left_new == 0
                 else "mid-apply")
        if where == "mid-apply":
            t.kills_mid_apply += 1
        lb.start()  # the restart applies the new file
        t.restarts += 1
        return f"killed {where}"

    def check(self, step: Optional[chaos.Step]) -> List[str]:
        cfg = self.config(step.world if step else self.world)[1]
        problems, snap, _left = read_maps(self.lb.pin_dir, self.lb.state_dir, cfg)
        if self.counters is not None:
            problems += counter_problems(self.counters, snap)
        self.counters = snap
        n = step.n if step else 0
        self.totals.inconsistencies += [f"step {n}: {p}" for p in problems]
        return problems


def summary_text(t: Totals, seconds: float) -> str:
    j = t.to_json()
    lines = [f"soak: seed {t.seed}, {seconds:.0f} s, {t.steps} steps",
             f"  reloads {t.reloads}, restarts {t.restarts}, kills {t.kills} "
             f"({t.kills_mid_apply} mid-apply)",
             f"  requests {t.requests}, failed {t.failed}: "
             + (", ".join(f"{k} {v}" for k, v in sorted(t.failed_by_cause.items())) or "none"),
             f"  unexpected failures {j['unexpected_failures']}, inconsistencies "
             f"{j['inconsistencies']}",
             f"  steps by kind: {dict(sorted(t.kinds.items()))}"]
    lines += [f"  ! {p}" for p in t.inconsistencies[:20]]
    return "\n".join(lines)


def run_soak(prefix: str, pin_dir: str, seconds: float, seed: int, log: Any = None,
             keep_lab: bool = False) -> Totals:
    lab = Lab(LabSpec(prefix=prefix, n_reals=len(chaos.REALS)))
    lab.up()
    soak = Soak(lab, pin_dir, seed, log)
    try:
        soak.start()
        return soak.run(seconds)
    finally:
        try:
            soak.close()
        finally:
            if not keep_lab:
                lab.down()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplbd.lab.soak", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="how long (default 600)")
    ap.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    ap.add_argument("--prefix", default="sksoak", help="lab prefix (default sksoak)")
    ap.add_argument("--pin-dir", default="/sys/fs/bpf/sksoak", help="the daemon's pins")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"soak: seed {seed} (replay: make soak SOAK_SEED={seed})", flush=True)
    t0 = time.monotonic()
    t = run_soak(args.prefix, args.pin_dir, args.seconds, seed)
    print(summary_text(t, time.monotonic() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(t.to_json(), f, indent=2)
    return 0 if t.ok else 1


if __name__ == "__main__":
    sys.exit(main())
